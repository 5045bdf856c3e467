"""
The daemons as an operator meets them: twistd plugins, their --help, and
the systemd units.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SkipTest, TestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def twistd(*args, env=None):
    """
    Run twistd with this interpreter; return (exit code, output).

    @param env: variables to add to the environment.
    """
    result = subprocess.run(
        [sys.executable, "-c",
         "import sys; from twisted.scripts.twistd import run; "
         "sys.argv[0] = 'twistd'; run()", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env=None if env is None else dict(os.environ, **env),
    )
    return result.returncode, result.stdout + result.stderr


class PluginTests(TestCase):
    """
    twistd finds both plugins and documents their options.
    """

    def test_twistd_help_lists_both_plugins(self):
        """twistd --help lists brickproxy and brickclient."""
        code, output = twistd("--help")
        self.assertEqual(code, 0, output)
        self.assertIn("brickproxy", output)
        self.assertIn("brickclient", output)

    def test_brickproxy_help_documents_every_option(self):
        """twistd brickproxy --help names every option of the contract."""
        code, output = twistd("brickproxy", "--help")
        self.assertEqual(code, 0, output)
        for option in ["--listen", "--domain", "--base", "--bus",
                       "--request-timeout", "--max-body", "--rate-limit",
                       "--ping-interval", "--authorized-keys",
                       "--shutdown-grace", "--access-log", "--metrics"]:
            self.assertIn(option, output)

    def test_brickclient_help_documents_every_option(self):
        """twistd brickclient --help names every option of the contract."""
        code, output = twistd("brickclient", "--help")
        self.assertEqual(code, 0, output)
        for option in ["--proxy", "--local", "--key", "--session", "--state",
                       "--ping-timeout", "--ca-cert", "--metrics"]:
            self.assertIn(option, output)

    def test_bad_option_values_are_usage_errors(self):
        """Malformed option values stop twistd with a clear message."""
        for args, text in [
            (("brickproxy", "--rate-limit", "fast"), "N/SECONDS"),
            (("brickproxy", "--bus", "kafka://x"), "unsupported --bus"),
            (("brickproxy", "--max-body", "-1"), "greater than 0"),
            (("brickclient", "--proxy", "ftp://x"), "proxy URL"),
            (("brickproxy", "--metrics", "nonsense:1"), "bad --metrics"),
            (("brickclient", "--metrics", "nonsense:1"), "bad --metrics"),
        ]:
            code, output = twistd("-n", *args)
            self.assertNotEqual(code, 0, output)
            self.assertIn(text, output)

    def test_bad_environment_values_are_usage_errors(self):
        """A bad or unknown BRICKPROXY_ variable stops twistd, named."""
        for env, text in [
            ({"BRICKPROXY_MAX_BODY": "-1"}, "BRICKPROXY_MAX_BODY: must be greater"),
            ({"BRICKPROXY_DOMIAN": "x"}, "unknown variable BRICKPROXY_DOMIAN"),
        ]:
            code, output = twistd("-n", "brickproxy", env=env)
            self.assertNotEqual(code, 0, output)
            self.assertIn(text, output)


class SystemdUnitTests(TestCase):
    """
    The sample units under contrib/systemd are valid and hardened.
    """

    def units(self):
        folder = os.path.join(REPO, "contrib", "systemd")
        return {name: open(os.path.join(folder, name), encoding="utf-8").read()
                for name in ("brickproxy.service", "brickclient.service")}

    def test_units_are_hardened(self):
        """Both units restart on failure and drop privileges."""
        for name, text in self.units().items():
            for setting in ["Restart=on-failure", "NoNewPrivileges=yes",
                            "ProtectSystem=strict"]:
                self.assertIn(setting, text, name)
            self.assertTrue(re.search(r"^(DynamicUser=yes|User=\w+)", text, re.M), name)
        self.assertIn("StateDirectory=brickclient", self.units()["brickclient.service"])

    def test_systemd_analyze_verify_passes(self):
        """systemd-analyze verify accepts both units (twistd path pointed here)."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed")
        twistd_path = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd_path):
            raise SkipTest("no twistd next to {}".format(sys.executable))
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        paths = []
        for name, text in self.units().items():
            path = os.path.join(folder, name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text.replace("/opt/brickchain-proxy/bin/twistd", twistd_path))
            paths.append(path)
        result = subprocess.run([analyze, "verify", *paths], capture_output=True,
                                text=True, timeout=60)
        problems = [line for line in (result.stdout + result.stderr).splitlines()
                    if "brick" in line]
        self.assertEqual((result.returncode, problems), (0, []))
