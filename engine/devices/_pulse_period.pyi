# The C module engine/devices/pulse_period.c; see engine/devices/pulse_state.py.
from collections.abc import Callable

LAYOUT: dict[str, int]
SIZE: int
READY: int
KICKED: int
SHORT: int
PERIOD: int
STOPPED: int
REFILL: int
READ_FAILED: int
WRITE_FAILED: int

def run_periods(state: int, session: int, handler: Callable[..., object] | None,
                mic: object, out: object, out_address: int,
                acquire: Callable[[], object], release: Callable[[], object], /) -> int: ...
def finish_period(state: int, due: float, woke: float, /) -> None: ...
def pull(state: int, /) -> int: ...
def write(state: int, samples: int, frames: int, offset: int, seek: int, /) -> int: ...
