"""
Hypothesis in this suite: where it may write, and the settings every
property test starts from.

  - No example database: L{BASE_SETTINGS} has C{database=None}, so a run
    never depends on what an earlier run found (a failure is reported with
    its falsifying example; rerun it with C{@reproduce_failure} or the
    seed).
  - What Hypothesis still caches (its charmap, the constants it collects
    from our source) goes to the repository's git-ignored C{.hypothesis/}
    directory, whatever the working directory: Hypothesis would otherwise
    use the one the process started in (trial itself runs tests in
    C{_trial_temp/}).  C{HYPOTHESIS_STORAGE_DIRECTORY}, when set, still
    decides.

Import L{BASE_SETTINGS} from here before any Hypothesis test runs, and
derive every C{settings} from it.
"""

import os
from pathlib import Path

from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

#: The repository's .hypothesis/ directory (git-ignored).
STORAGE = Path(__file__).resolve().parent.parent / ".hypothesis"

if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(STORAGE)

#: What every property test's settings derive from.
BASE_SETTINGS = settings(database=None, deadline=None)

__all__ = ["STORAGE", "BASE_SETTINGS"]
