"""
Options from the environment (L{brickchain_proxy.envconfig}): both daemons
read C{BRICKPROXY_<OPTION>} / C{BRICKCLIENT_<OPTION>}, the command line
wins, and an environment value is checked like a command-line one.
"""

import os

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from brickchain_proxy.client import tap as client_tap
from brickchain_proxy.proxy import tap as proxy_tap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(options_class, environ, argv=()):
    """
    Parse C{argv} with C{environ} as the environment.
    """
    options = options_class()
    options.environ = environ
    options.parseOptions(list(argv))
    return options


def proxy(environ, *argv):
    return parse(proxy_tap.Options, environ, argv)


def client(environ, *argv):
    return parse(client_tap.Options, environ, argv)


class ParametersTests(SynchronousTestCase):
    """
    Options with a value.
    """

    def test_environment_sets_an_option(self):
        """BRICKPROXY_DOMAIN sets --domain, and goes through its checks."""
        config = proxy({"BRICKPROXY_DOMAIN": "Example.IO."})
        self.assertEqual(config["domain"], "example.io")

    def test_dashes_become_underscores(self):
        """BRICKPROXY_MAX_BODY sets --max-body, coerced to an int."""
        config = proxy({"BRICKPROXY_MAX_BODY": "1000000"})
        self.assertEqual(config["max-body"], 1000000)

    def test_command_line_wins(self):
        """An option on the command line overrides its variable."""
        config = proxy({"BRICKPROXY_DOMAIN": "env.io",
                        "BRICKPROXY_REQUEST_TIMEOUT": "5"},
                       "--domain", "cli.io")
        self.assertEqual((config["domain"], config["request-timeout"]),
                         ("cli.io", 5.0))

    def test_empty_variable_is_unset(self):
        """An empty variable leaves the default."""
        config = client({"BRICKCLIENT_LOCAL": ""})
        self.assertEqual(config["local"], "http://localhost:8080")

    def test_client_options(self):
        """The client reads BRICKCLIENT_<OPTION> the same way."""
        config = client({"BRICKCLIENT_PROXY": "https://example.io",
                         "BRICKCLIENT_SESSION": "s1",
                         "BRICKCLIENT_LOCAL_TIMEOUT": "3"})
        self.assertEqual(
            (config["proxy"], config["session"], config["local-timeout"]),
            ("https://example.io", "s1", 3.0))

    def test_every_option_has_a_variable(self):
        """Each option but --help/--version has its variable."""
        for options_class, prefix, sample in [
                (proxy_tap.Options, "BRICKPROXY_", "BRICKPROXY_V1_WS_PACING"),
                (client_tap.Options, "BRICKCLIENT_", "BRICKCLIENT_LOCAL_HEADER")]:
            variables = options_class().environment_variables()
            self.assertIn(sample, variables)
            self.assertNotIn(prefix + "HELP", variables)
            long_options = {name.rstrip("=") for name in options_class().longOpt
                            if name.rstrip("=") not in ("help", "version")}
            self.assertEqual(set(variables.values()), long_options)


class FlagTests(SynchronousTestCase):
    """
    Flags take 1/true/yes/on (or 0/false/no/off).
    """

    def test_true_words_set_the_flag(self):
        """1, true, yes and on (any case) set a flag."""
        for word in ["1", "true", "YES", "On"]:
            config = proxy({"BRICKPROXY_ACCESS_LOG": word})
            self.assertTrue(config["access-log"], word)

    def test_false_words_leave_it_off(self):
        """0, false, no and off leave a flag off."""
        for word in ["0", "false", "No", "off"]:
            config = proxy({"BRICKPROXY_TRUST_FORWARDED": word})
            self.assertFalse(config["trust-forwarded"], word)

    def test_other_words_are_a_usage_error(self):
        """Anything else is refused, naming the variable."""
        e = self.assertRaises(usage.UsageError, proxy,
                              {"BRICKPROXY_ACCESS_LOG": "maybe"})
        self.assertIn("BRICKPROXY_ACCESS_LOG", str(e))

    def test_flag_on_the_command_line_wins(self):
        """A flag given on the command line is set whatever the variable says."""
        config = proxy({"BRICKPROXY_ACCESS_LOG": "no"}, "--access-log")
        self.assertTrue(config["access-log"])


class RepeatableTests(SynchronousTestCase):
    """
    Repeatable options take several values.
    """

    def test_listen_and_base_split_at_spaces_and_newlines(self):
        """BRICKPROXY_LISTEN and _BASE hold values separated by spaces or lines."""
        config = proxy({
            "BRICKPROXY_LISTEN": "tcp:0:interface=127.0.0.1 tcp:0\n  tcp6:0\n",
            "BRICKPROXY_BASE": "https://a.example\nhttps://b.example",
        })
        self.assertEqual(config["listen"],
                         ["tcp:0:interface=127.0.0.1", "tcp:0", "tcp6:0"])
        self.assertEqual(config["bases"], ["https://a.example", "https://b.example"])
        self.assertEqual(config["base"], "https://a.example")

    def test_local_headers_one_a_line(self):
        """BRICKCLIENT_LOCAL_HEADER takes one header a line; values keep spaces."""
        config = client({"BRICKCLIENT_LOCAL_HEADER":
                         "X-HA-Access: a b, c\n\nX-Other: 1\n"})
        self.assertEqual(config["local-headers"],
                         [("X-HA-Access", "a b, c"), ("X-Other", "1")])

    def test_command_line_replaces_the_whole_list(self):
        """--listen on the command line replaces BRICKPROXY_LISTEN entirely."""
        config = proxy({"BRICKPROXY_LISTEN": "tcp:1 tcp:2"}, "--listen", "tcp:0")
        self.assertEqual(config["listen"], ["tcp:0"])

    def test_each_value_is_validated(self):
        """A bad header in the list is refused, naming the variable."""
        e = self.assertRaises(usage.UsageError, client,
                              {"BRICKCLIENT_LOCAL_HEADER": "X-A: 1\nHost: x"})
        self.assertIn("BRICKCLIENT_LOCAL_HEADER", str(e))
        self.assertIn("cannot set Host", str(e))


class ValidationTests(SynchronousTestCase):
    """
    An environment value meets the same checks as the command line.
    """

    def test_coercer_refusal_names_the_variable(self):
        """A value the option's coercer refuses names its variable."""
        e = self.assertRaises(usage.UsageError, proxy, {"BRICKPROXY_MAX_BODY": "-1"})
        self.assertTrue(str(e).startswith("BRICKPROXY_MAX_BODY: "), str(e))
        self.assertIn("greater than 0", str(e))

    def test_post_options_refusal_names_the_variable(self):
        """A value refused after parsing (postOptions) names its variable."""
        for environ, variable, text in [
                ({"BRICKPROXY_BASE": "ftp://x"}, "BRICKPROXY_BASE", "--base"),
                ({"BRICKPROXY_RATE_LIMIT": "fast"}, "BRICKPROXY_RATE_LIMIT",
                 "N/SECONDS"),
                ({"BRICKPROXY_BUS": "kafka://x"}, "BRICKPROXY_BUS", "--bus"),
                ({"BRICKPROXY_LISTEN": "nonsense:1"}, "BRICKPROXY_LISTEN",
                 "--listen")]:
            e = self.assertRaises(usage.UsageError, proxy, environ)
            self.assertTrue(str(e).startswith(variable + ": "), str(e))
            self.assertIn(text, str(e))
        e = self.assertRaises(usage.UsageError, client,
                              {"BRICKCLIENT_PROXY": "ftp://x"})
        self.assertTrue(str(e).startswith("BRICKCLIENT_PROXY: "), str(e))

    def test_command_line_errors_do_not_blame_the_environment(self):
        """A bad command-line value is reported as before."""
        e = self.assertRaises(usage.UsageError, proxy,
                              {"BRICKPROXY_DOMAIN": "example.io"},
                              "--base", "ftp://x")
        self.assertTrue(str(e).startswith("--base"), str(e))

    def test_value_is_not_echoed(self):
        """The refusal does not repeat the variable's value (it may be a secret)."""
        e = self.assertRaises(usage.UsageError, proxy,
                              {"BRICKPROXY_ACCESS_LOG": "s3cret"})
        self.assertNotIn("s3cret", str(e))


class UnknownVariableTests(SynchronousTestCase):
    """
    A variable with our prefix that names no option is an error: a typo
    must not silently drop a setting such as --authorized-keys.
    """

    def test_unknown_variable_is_a_usage_error(self):
        """BRICKPROXY_AUTHORISED_KEYS (a typo) stops the start, named."""
        e = self.assertRaises(usage.UsageError, proxy,
                              {"BRICKPROXY_AUTHORISED_KEYS": "/etc/keys"})
        self.assertIn("BRICKPROXY_AUTHORISED_KEYS", str(e))
        self.assertIn("BRICKPROXY_AUTHORIZED_KEYS", str(e))  # the known ones

    def test_other_prefixes_are_ignored(self):
        """The client ignores BRICKPROXY_* and everything else, and the other way round."""
        client({"BRICKPROXY_DOMAIN": "x", "PATH": "/bin"})
        proxy({"BRICKCLIENT_PROXY": "x"})

    def test_opts_variable_is_reserved(self):
        """*_OPTS, which the systemd units pass on the command line, is allowed."""
        proxy({"BRICKPROXY_OPTS": "--access-log"})
        client({"BRICKCLIENT_OPTS": "--session x"})

    def test_help_ignores_the_environment(self):
        """--help works even with a bad environment."""
        options = proxy_tap.Options()
        options.environ = {"BRICKPROXY_NOPE": "1"}
        options._dispatch["help"] = lambda name, value: None
        options.parseOptions(["--help"])


class HelpTests(SynchronousTestCase):
    """
    --help says how the environment is read.
    """

    def test_help_documents_the_environment(self):
        """Both daemons' usage text names the prefix and that the command line wins."""
        for options_class, prefix in [(proxy_tap.Options, "BRICKPROXY_"),
                                      (client_tap.Options, "BRICKCLIENT_")]:
            text = " ".join(str(options_class()).split())
            self.assertIn(prefix + "<OPTION>", text)
            self.assertIn("the command line wins", text)


class EnvironmentFileTests(SynchronousTestCase):
    """
    The sample EnvironmentFiles in contrib/systemd set only known variables.
    """

    def variables(self, name):
        path = os.path.join(REPO, "contrib", "systemd", name)
        names = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    names.append(line.split("=", 1)[0].strip())
        return names

    def test_sample_files_name_known_variables(self):
        """Every variable in brickproxy.env and brickclient.env is an option."""
        for name, options_class in [("brickproxy.env", proxy_tap.Options),
                                    ("brickclient.env", client_tap.Options)]:
            names = self.variables(name)
            self.assertTrue(names, name)
            known = set(options_class().environment_variables())
            self.assertEqual(set(names) - known, set(), name)
