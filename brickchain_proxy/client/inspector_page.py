"""
The inspector's web page: one self-contained HTML document (inline CSS and
script, nothing fetched from elsewhere) that lists the exchanges from
C{api/requests}, follows C{api/events} (server-sent events) to update live,
and replays an exchange with C{POST api/requests/<id>/replay}.

Everything recorded is put on the page with C{textContent} and
C{createElement}, never parsed as HTML; and the page's Content-Security-Policy
allows only this script and this style (by hash), so a recorded
C{<script>} could not run even if it got into the document.
"""

import base64
import hashlib

STYLE = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 0; color: #1d1d1f; background: #f5f5f7; }
header { display: flex; align-items: center; gap: 1em; padding: .6em 1em; background: #1d2b3a; color: #fff; }
header h1 { font-size: 15px; margin: 0; font-weight: 600; }
#live { font-size: 12px; padding: .1em .6em; border-radius: 1em; background: #8a6d00; }
#live.on { background: #1e7b34; }
#count { margin-left: auto; font-size: 12px; opacity: .8; }
main { padding: .6em 1em; }
#empty { color: #666; }
ol#exchanges { list-style: none; margin: 0; padding: 0; }
li.exchange { background: #fff; border: 1px solid #d8d8dc; border-radius: 6px; margin: 0 0 .5em; }
.row { display: flex; align-items: center; gap: .8em; padding: .4em .6em; }
.num { color: #888; min-width: 3em; }
.method { font-weight: 600; min-width: 4em; }
.path { font-family: ui-monospace, monospace; overflow-wrap: anywhere; flex: 1; }
.status { font-weight: 600; min-width: 3em; }
.s2 { color: #1e7b34; } .s3 { color: #2a5db0; } .s4 { color: #b35c00; } .s5, .sx { color: #c0262d; }
.dur { color: #555; min-width: 6em; text-align: right; }
.tag { font-size: 11px; color: #555; background: #eceff3; border-radius: 3px; padding: 0 .4em; }
button.replay { font: inherit; padding: .1em .7em; cursor: pointer; }
details { border-top: 1px solid #eee; padding: .2em .6em .5em; }
summary { cursor: pointer; color: #555; }
.sides { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
h3 { font-size: 12px; margin: .6em 0 .2em; text-transform: uppercase; color: #666; }
table.headers { border-collapse: collapse; font-family: ui-monospace, monospace; font-size: 12px; }
table.headers td { padding: 0 .8em 0 0; vertical-align: top; overflow-wrap: anywhere; }
table.headers td:first-child { color: #555; white-space: nowrap; }
.meta { color: #666; font-size: 12px; }
pre.body { background: #f8f8fa; border: 1px solid #eee; padding: .4em; margin: .2em 0;
           max-height: 24em; overflow: auto; white-space: pre-wrap; overflow-wrap: anywhere; }
.error { color: #c0262d; }
"""

SCRIPT = """
"use strict";
const list = document.getElementById("exchanges");
const live = document.getElementById("live");
const count = document.getElementById("count");
const empty = document.getElementById("empty");
const keep = parseInt(document.body.dataset.keep, 10) || 100;
const items = new Map();

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function headersTable(pairs) {
  const table = el("table", "headers");
  for (const [name, value] of pairs) {
    const tr = el("tr");
    tr.append(el("td", "", name), el("td", "", value));
    table.append(tr);
  }
  if (!pairs.length) {
    const tr = el("tr");
    tr.append(el("td", "meta", "(none)"));
    table.append(tr);
  }
  return table;
}

function hexDump(hex) {
  const lines = [];
  for (let offset = 0; offset < hex.length / 2; offset += 16) {
    const chunk = hex.slice(offset * 2, offset * 2 + 32);
    const bytes = chunk.match(/../g) || [];
    const ascii = bytes.map(b => {
      const c = parseInt(b, 16);
      return c >= 32 && c < 127 ? String.fromCharCode(c) : ".";
    }).join("");
    lines.push(offset.toString(16).padStart(8, "0") + "  " +
               bytes.join(" ").padEnd(48) + "  |" + ascii + "|");
  }
  return lines.join("\\n");
}

function bodyView(body) {
  const box = el("div", "bodyview");
  let meta = body.size + " bytes";
  if (body.truncated) meta += ", truncated: the first bytes are shown";
  if (body.pretty !== undefined) meta += ", JSON";
  else if (body.text === undefined) meta += ", binary";
  box.append(el("div", "meta", meta));
  if (body.size === 0) return box;
  let shown;
  if (body.pretty !== undefined) shown = body.pretty;
  else if (body.text !== undefined) shown = body.text;
  else shown = hexDump(body.hex) + (body.hex.length / 2 < body.size ? "\\n..." : "");
  box.append(el("pre", body.text === undefined ? "body hex" : "body", shown));
  return box;
}

function side(title, headers, body) {
  const div = el("div", "side");
  div.append(el("h3", "", title + " headers"), headersTable(headers),
             el("h3", "", title + " body"), bodyView(body));
  return div;
}

function statusClass(status) {
  return status ? "s" + String(status)[0] : "sx";
}

function render(item) {
  const li = el("li", "exchange");
  li.id = "exchange-" + item.id;
  li.dataset.id = item.id;
  li.dataset.path = item.path;
  li.dataset.state = item.state;
  li.dataset.status = item.status === null ? "" : item.status;
  if (item.replay_of !== null) li.dataset.replayOf = item.replay_of;
  const row = el("div", "row");
  row.append(el("span", "num", "#" + item.id), el("span", "method", item.method),
             el("span", "path", item.path),
             el("span", "status " + statusClass(item.status),
                item.status === null ? (item.state === "pending" ? "..." : "-") : item.status),
             el("span", "dur", item.duration_ms === null ? "" :
                item.duration_ms.toFixed(1) + " ms"));
  if (item.replay_of !== null) row.append(el("span", "tag", "replay of #" + item.replay_of));
  else row.append(el("span", "tag", item.kind === "http" ? "v1" : item.kind));
  const button = el("button", "replay", "Replay");
  button.type = "button";
  button.addEventListener("click", () => replay(item.id, li));
  row.append(button);
  li.append(row);
  if (item.error) li.append(el("div", "row error", item.error));
  const details = el("details");
  details.append(el("summary", "", "headers and bodies"));
  const sides = el("div", "sides");
  sides.append(side("request", item.request_headers, item.request_body),
               side("response", item.response_headers, item.response_body));
  details.append(sides);
  li.append(details);
  return li;
}

function upsert(item) {
  const old = document.getElementById("exchange-" + item.id);
  const known = items.get(item.id);
  // A snapshot can be older than an event already shown: never go back.
  if (known && known.state !== "pending" && item.state === "pending") return;
  const node = render(item);
  items.set(item.id, item);
  if (old) {
    node.querySelector("details").open = old.querySelector("details").open;
    old.replaceWith(node);
  } else {
    let before = null;
    for (const child of list.children) {
      if (Number(child.dataset.id) < item.id) { before = child; break; }
    }
    list.insertBefore(node, before);
  }
  while (list.children.length > keep) {
    const last = list.lastElementChild;
    items.delete(Number(last.dataset.id));
    last.remove();
  }
  update();
}

function update() {
  count.textContent = list.children.length + " exchange" + (list.children.length === 1 ? "" : "s");
  empty.hidden = list.children.length > 0;
}

async function replay(id, li) {
  const button = li.querySelector("button.replay");
  button.disabled = true;
  try {
    const response = await fetch("api/requests/" + id + "/replay", {
      method: "POST", headers: {"X-Inspector": "replay"}});
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    upsert(answer);
  } catch (e) {
    const note = el("div", "row error", "replay failed: " + e.message);
    li.querySelector(".row").after(note);
  } finally {
    button.disabled = false;
  }
}

async function resync() {
  const response = await fetch("api/requests");
  const all = await response.json();
  // Drop what the log no longer keeps; what is newer than the snapshot
  // came by event and stays.
  const newest = all.length ? all[0].id : 0;
  const kept = new Set(all.map(item => item.id));
  for (const child of Array.from(list.children)) {
    const id = Number(child.dataset.id);
    if (id <= newest && !kept.has(id)) { items.delete(id); child.remove(); }
  }
  for (const item of all.reverse()) upsert(item);
  update();
}

function connect() {
  const events = new EventSource("api/events");
  events.addEventListener("open", () => {
    resync().then(() => {
      live.textContent = "live";
      live.className = "on";
      document.body.dataset.live = "yes";
    });
  });
  events.addEventListener("exchange", event => upsert(JSON.parse(event.data)));
  events.addEventListener("error", () => {
    live.textContent = "reconnecting";
    live.className = "";
    document.body.dataset.live = "no";
  });
}

update();
connect();
"""

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>brickclient inspector</title>
<link rel="icon" href="data:,">
<style>{style}</style>
</head>
<body data-keep="{keep}" data-live="no">
<header><h1>brickclient inspector</h1><span id="live">connecting</span><span id="count"></span></header>
<main>
<p id="empty">No requests yet: requests through the tunnel appear here as they happen.</p>
<ol id="exchanges"></ol>
</main>
<script>{script}</script>
</body>
</html>
"""


def _hash(text):
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-{}'".format(base64.b64encode(digest).decode("ascii"))


#: The page's Content-Security-Policy: this script and style only, requests
#: to its own origin only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; "
    "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
).format(_hash(SCRIPT), _hash(STYLE))


def page(keep):
    """
    The page (L{bytes}) for a log of at most C{keep} exchanges.
    """
    return _TEMPLATE.format(style=STYLE, script=SCRIPT, keep=int(keep)).encode("utf-8")
