"""Opt a test module into one platform for all its tests.

``from tests.integration.shared_platform import shared_platform`` in a module makes its
``platform`` the module's (``module_platform`` in tests/conftest.py) instead of a clone per
test. Only for modules whose tests each make their own tenants (random names) and look only
at them: a clone and its drop (a forced checkpoint) cost a short test most of its time.
"""

import pytest


@pytest.fixture(scope="module", name="platform")
async def shared_platform(module_platform):
    return module_platform
