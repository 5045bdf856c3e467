"""
Options from the environment: every option of a daemon can also be set as
C{<PREFIX><OPTION>} (upper case, dashes as underscores), e.g.
C{BRICKPROXY_DOMAIN} for C{--domain}.  The command line wins.

One mixin for both daemons' L{usage.Options}: the environment's values go
through the option's own handler (its coercer or C{opt_*} method) and the
same C{postOptions} checks as the command line, and a refused value names
its variable.
"""

import getopt
import os
import re
import sys

from twisted.python import usage

#: What a flag's variable may say (case-insensitive).
_TRUE = frozenset(["1", "true", "yes", "on"])
_FALSE = frozenset(["", "0", "false", "no", "off"])

#: Options that only print something and exit: never read from the
#: environment.
_NOT_FROM_ENVIRONMENT = frozenset(["help", "version"])


def environment_help(prefix, repeatable_note):
    """
    The paragraph both daemons add to their C{--help}.
    """
    return (
        " Every option can also be set in the environment as {prefix}<OPTION> "
        "(upper case, dashes as underscores, e.g. {prefix}MAX_BODY=1000000); "
        "the command line wins. Flags take 1/true/yes/on or 0/false/no/off. "
        "{repeatable} An empty variable counts as unset; an unknown "
        "{prefix}* variable is an error ({prefix}OPTS excepted: the systemd "
        "unit passes it on the command line).".format(
            prefix=prefix, repeatable=repeatable_note)
    )


class EnvironmentOptions:
    """
    Mix into a L{usage.Options} (before it) to read options from the
    environment.

    @cvar envPrefix: the variables' prefix, e.g. C{"BRICKPROXY_"}.
    @cvar envRepeatable: repeatable options (their C{opt_*} method appends),
        by their command-line name, each mapped to the separator its
        variable may use besides newlines (L{None}: newlines only).
    @cvar envReserved: variables with the prefix that are not options and
        are left alone.
    @ivar environ: the environment to read (L{None}: C{os.environ}); tests
        set it.
    """

    envPrefix = None
    envRepeatable = {}
    envReserved = frozenset()
    environ = None

    def parseOptions(self, options=None):
        if options is None:
            options = sys.argv[1:]
        given = self._given_on_command_line(options)
        from_environment = {}
        if not given & _NOT_FROM_ENVIRONMENT:
            from_environment = self._apply_environment(given)
        try:
            usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            named = _naming_variable(e, from_environment)
            if named is e:
                raise
            raise named from None

    def environment_variables(self):
        """
        @return: a L{dict} of each option's variable name to the option's
            command-line name (without dashes).
        """
        names = set(self.synonyms.values()) - _NOT_FROM_ENVIRONMENT
        return {self.envPrefix + name.upper().replace("-", "_"): name
                for name in names}

    def _given_on_command_line(self, options):
        try:
            opts, _ = getopt.getopt(options, self.shortOpt, self.longOpt)
        except getopt.error:
            return set()  # usage.Options reports it
        given = set()
        for opt, _ in opts:
            name = opt.lstrip("-")
            name = self.synonyms.get(name, self.synonyms.get(name.replace("-", "_")))
            if name is not None:
                given.add(name)
        return given

    def _apply_environment(self, given):
        environ = os.environ if self.environ is None else self.environ
        variables = self.environment_variables()
        unknown = sorted(
            key for key in environ
            if key.startswith(self.envPrefix) and key not in variables
            and key not in self.envReserved
        )
        if unknown:
            raise usage.UsageError(
                "unknown variable{} {} in the environment: no such option "
                "(known: {})".format(
                    "s" if len(unknown) > 1 else "", ", ".join(unknown),
                    ", ".join(sorted(variables))))
        applied = {}
        for variable in sorted(variables):
            name = variables[variable]
            value = environ.get(variable)
            if value is None or name in given or not value.strip():
                continue
            try:
                self._apply(name, value)
            except usage.UsageError as e:
                raise usage.UsageError("{}: {}".format(variable, e))
            applied[name] = variable
        return applied

    def _apply(self, name, value):
        dispatch = self._dispatch[name]
        if name + "=" not in self.longOpt:
            word = value.strip().lower()
            if word in _TRUE:
                dispatch(name, None)
            elif word not in _FALSE:
                raise usage.UsageError(
                    "a flag takes 1/true/yes/on or 0/false/no/off")
            return
        if name in self.envRepeatable:
            for item in _items(value, self.envRepeatable[name]):
                _dispatch(dispatch, name, item)
            return
        _dispatch(dispatch, name, value.strip())


def _dispatch(dispatch, name, value):
    if isinstance(dispatch, usage.CoerceParameter):
        dispatch.dispatch(name, value)
    else:
        dispatch(name, value)


def _items(value, separator):
    """
    A repeatable option's items: one a line (and split at C{separator}
    too, when given); blank ones are skipped.
    """
    lines = value.splitlines()
    if separator is not None:
        lines = [part for line in lines for part in line.split(separator)]
    return [item.strip() for item in lines if item.strip()]


def _naming_variable(error, from_environment):
    """
    A L{usage.UsageError} from the checks after parsing that is about an
    option set from the environment, with the variable named first.
    """
    message = str(error)
    for name, variable in from_environment.items():
        if re.search(r"--{}(?![\w-])".format(re.escape(name)), message):
            return usage.UsageError("{}: {}".format(variable, message))
    return error
