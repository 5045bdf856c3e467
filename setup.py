"""Packaging for brickchain-proxy."""

from setuptools import find_packages, setup

with open("README.rst", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="brickchain-proxy",
    version="0.1.0",
    description=(
        "Tunneling proxy: publish an HTTP or WebSocket service from behind a "
        "firewall or NAT without opening an inbound port."
    ),
    long_description=long_description,
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["brickchain_proxy", "brickchain_proxy.*"])
    + ["twisted.plugins"],
    # twisted/plugins has no __init__.py on purpose: it extends Twisted's own
    # plugin package, so `twistd --help` lists brickproxy and brickclient.
    package_data={"twisted": ["plugins/brickchain_plugins.py"]},
    install_requires=[
        "twisted[tls]>=23.10.0",
        "autobahn>=23.1.2",
        # 1.6.0: RedisFactory.startConnecting(endpoint) (TLS, our endpoints)
        # and username= (Redis 6 ACLs).
        "txredisapi>=1.6.0",
        "pyopenssl>=23.0.0",
        "service-identity>=23.1.0",
        "cryptography>=41.0.0",
        "jwcrypto>=1.5.0",
        "orjson>=3.9.0",
        "pybase64>=1.3.0",
        "zope.interface>=6.0",
        # attr.s classes: the wire messages, the envelopes, the relays.
        "attrs>=22.2.0",
        # --metrics: Prometheus' own client keeps the exposition format (and
        # its escaping, content negotiation, histograms) right; we only
        # count into a per-service registry and serve it.
        "prometheus-client>=0.17.0",
        # The streamed path's local HTTP/1.1 client parses answers with
        # llhttp (node's parser) through httptools, as uvicorn does.
        "httptools>=0.6.0",
    ],
    extras_require={
        # The compatibility tier runs real third-party software around the
        # tunnel: aiohttp, uvicorn + starlette as local services; websockets,
        # aiohttp and headless Chromium (driven by playwright, using
        # Debian's chromium, never a downloaded browser) as visitors.
        "test": [
            "treq>=23.11.0",
            "hypothesis>=6.90.0",
            "coverage>=7.0",
            "aiohttp>=3.9",
            "starlette>=0.37",
            "uvicorn>=0.29",
            "websockets>=12.0",
            "playwright>=1.44",
        ],
        "speed": ["wsaccel>=0.6.6"],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: Proxy Servers",
    ],
)
