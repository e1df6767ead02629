"""Shared by the Ray tests (test_distributed.py, test_distributed_nodes.py): the bundled pair they compare
and the check that a Ray run's results equal a local run's to the last digit."""
import os

import numpy as np
import pandas as pd

FAMILY = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "models")
BASE, INSTRUCT = os.path.join(FAMILY, "base"), os.path.join(FAMILY, "instruct")


def assert_same_results(local, remote):
    pd.testing.assert_frame_equal(local.table, remote.table, check_exact=True)
    pd.testing.assert_frame_equal(local.kind_table(), remote.kind_table(), check_exact=True)
    for kind in local.kinds:
        np.testing.assert_array_equal(local.svsm(kind), remote.svsm(kind))
        np.testing.assert_array_equal(local.sigma(kind, "post"), remote.sigma(kind, "post"))
