# The C module engine/echo_batch.c; see engine/echo.py (_DirectApm.cancel).

def cancel(request: int, drop: int, requests: tuple[tuple[bytes, bytes], ...], far: int,
           near: int, frame: int, mic: int, ref: int, out: int, frames: int, cpu_us: int,
           window: int, index: int, /) -> tuple[int, int, bytes | None]: ...
