from filterax.testing.conftest_common import *  # noqa: F403
