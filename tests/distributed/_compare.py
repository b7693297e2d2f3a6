"""The one comparison every 2-process test makes: each rank's losses, gradients and state against the
one-process run of the same global batch."""

from __future__ import annotations

from typing import Any

import numpy as np


def assert_matches_one_process(single: dict[str, Any], ranks: list[dict[str, Any]], what: str = "") -> None:
    """``single`` and every entry of ``ranks`` hold ``losses`` (list), ``grads`` and ``state``
    (name -> array). The first step's loss to 1e-5 relative; gradients and state to 1e-4 relative to each
    tensor's largest entry (fp32 sums run in another order on two processes), and so the later steps' losses,
    which follow an update from those gradients, to 1e-4 too (Barlow Twins' after one SGD step at lr 0.1:
    2.7e-5). A missing or doubled gather is off by far more."""
    prefix = f"{what} " if what else ""
    for result in ranks:
        first, later = single["losses"][:1], single["losses"][1:]
        np.testing.assert_allclose(result["losses"][:1], first, rtol=1e-5, atol=1e-6, err_msg=what)
        np.testing.assert_allclose(result["losses"][1:], later, rtol=1e-4, atol=1e-6, err_msg=what)
        assert result["grads"].keys() == single["grads"].keys(), what
        for kind in ("grads", "state"):
            for name, value in single[kind].items():
                scale = float(np.abs(value).max()) + 1e-12
                np.testing.assert_allclose(
                    result[kind][name], value, rtol=1e-4, atol=1e-4 * scale + 1e-6, err_msg=prefix + name
                )
