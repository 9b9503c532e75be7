"""Whether the Hugging Face Hub can be used now, decided once, quickly, before anything loads.

Without the Hub, huggingface_hub and datasets retry every request for ~25 s and end in a long
traceback. Offline mode (`HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE`) means "use the local cache";
otherwise one short request to the Hub's endpoint (`HF_ENDPOINT`) tells whether it answers.
"""

from __future__ import annotations

import os
from functools import cache

from ..errors import first_line

#: Seconds the reachability probe waits for the Hub.
PROBE_TIMEOUT = 3.0
#: What makes huggingface_hub treat a variable as set (its `_is_true`).
_TRUE = {"1", "ON", "YES", "TRUE"}
#: The offline switches of huggingface_hub (models) and of datasets (MGSM data).
HUB_OFFLINE = ("HF_HUB_OFFLINE",)
DATASETS_OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def offline_switch(names: tuple[str, ...]) -> str | None:
    """`NAME=value` of the first of `names` that turns offline mode on, or None."""
    for name in names:
        value = os.environ.get(name, "")
        if value.upper() in _TRUE:
            return f"{name}={value}"
    return None


@cache
def probe_failure() -> str | None:
    """Why one HEAD request to the Hub endpoint failed (no retries), or None if it answered.

    Any HTTP answer, even an error status, means reachable. Probed once per process.
    """
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT)
    except Exception as error:  # DNS, refused, timeout, proxy, TLS: all "unreachable"
        return f"{constants.ENDPOINT}: {first_line(error)}"
    return None
