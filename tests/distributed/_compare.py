"""The one comparison every 2-process test makes: each rank's losses, gradients and state against the
one-process run of the same global batch."""

from __future__ import annotations

from typing import Any

import numpy as np


def assert_matches_one_process(single: dict[str, Any], ranks: list[dict[str, Any]], what: str = "") -> None:
    """``single`` and every entry of ``ranks`` hold ``losses`` (list), ``grads`` and ``state``
    (name -> array). Losses to 1e-5 relative; gradients and state to 1e-4 relative to each tensor's largest
    entry (fp32 sums run in another order on two processes)."""
    prefix = f"{what} " if what else ""
    for result in ranks:
        np.testing.assert_allclose(result["losses"], single["losses"], rtol=1e-5, atol=1e-6, err_msg=what)
        assert result["grads"].keys() == single["grads"].keys(), what
        for kind in ("grads", "state"):
            for name, value in single[kind].items():
                scale = float(np.abs(value).max()) + 1e-12
                np.testing.assert_allclose(
                    result[kind][name], value, rtol=1e-4, atol=1e-4 * scale + 1e-6, err_msg=prefix + name
                )
