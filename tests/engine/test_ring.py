"""AudioRing: the model-based properties, and two real processes racing writes and flushes."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callctl.engine.ring import AudioRing, next_power_of_two

op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 70)),
    st.tuples(st.just("read"), st.integers(0, 70)),
    st.tuples(st.just("read_available"), st.integers(0, 70)),
    st.tuples(st.just("request_flush"), st.just(0)),
    st.tuples(st.just("flush"), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(capacity_log2=st.integers(1, 6), ops=st.lists(op, max_size=60))
def test_ring_behaves_like_a_bounded_fifo(capacity_log2: int, ops: list[tuple[str, int]]) -> None:
    capacity = 1 << capacity_log2
    model: deque[int] = deque()
    pending_mark: int | None = None  # model of a producer flush not yet honoured
    written = 0
    underruns = 0
    with AudioRing.create(capacity) as ring:
        for name, n in ops:
            if name == "write":
                samples = (np.arange(written, written + n) % 30000 + 1).astype(np.int16)
                accepted = ring.write(samples)
                free = capacity - len(model)
                assert accepted == min(n, free)
                model.extend(int(v) for v in samples[:accepted])
                written += accepted
            elif name in ("read", "read_available"):
                if pending_mark is not None:
                    while model and pending_mark > 0:
                        model.popleft()
                        pending_mark -= 1
                    pending_mark = None
                out = np.full(n, -1, np.int16)
                if name == "read":
                    got = ring.read_into(out)
                    expect = [model.popleft() for _ in range(min(n, len(model)))]
                    assert got == len(expect)
                    assert out[:got].tolist() == expect
                    assert not out[got:].any(), "short read must be padded with silence"
                    if 0 < got < n:
                        underruns += 1
                else:
                    got = ring.read_available_into(out)
                    expect = [model.popleft() for _ in range(min(n, len(model)))]
                    assert out[:got].tolist() == expect
            elif name == "request_flush":
                ring.request_flush()
                pending_mark = len(model)  # everything queued now must never play
            elif name == "flush":
                if pending_mark is not None:
                    pending_mark = None  # a consumer flush drops at least as much
                start = ring.read_index
                dropped = ring.flush()
                assert dropped == len(model)
                data = np.ndarray((capacity,), np.int16, ring._shm.buf, 64)
                slots = [(start + i) % capacity for i in range(dropped)]
                assert not data[slots].any(), "flushed audio must be zeroed"
                del data
                model.clear()
            if pending_mark is None:
                assert ring.available() == len(model)
        assert ring.underruns == underruns


def _producer(name: str, total: int, seed: int, marks: mp.Queue) -> None:
    rng = np.random.default_rng(seed)
    ring = AudioRing.attach(name)
    index = 0
    pending: np.ndarray = np.zeros(0, np.int16)
    while index < total:
        if len(pending) == 0:
            n = int(rng.integers(1, 300))
            pending = (np.arange(index, index + n) % 30000 + 1).astype(np.int16)
        wrote = ring.write(pending)
        index += wrote
        pending = pending[wrote:]
        if rng.random() < 0.02:
            ring.request_flush()
            marks.put(ring.write_index)
            pending = pending[:0]
    marks.put(-1)
    ring.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_processes_racing_writes_and_flushes(seed: int) -> None:
    """Every sample carries its ring index; each read must return exactly the
    frames just below the new read index, which only moves forward.

    A producer in another process writes and sometimes requests a flush; the
    consumer here reads in odd sizes and sometimes flushes itself. Flushed
    audio playing would show as a sample whose index is not the one read, or
    as a zero (a zeroed slot) in the middle of audio.
    """
    ctx = mp.get_context("spawn")
    marks: mp.Queue = ctx.Queue()
    total = 400_000
    rng = np.random.default_rng(seed)
    with AudioRing.create(1024) as ring:
        proc = ctx.Process(target=_producer, args=(ring.name, total, seed, marks))
        proc.start()
        try:
            out = np.zeros(512, np.int16)
            last_index = 0
            read = 0
            mark = 0  # the latest producer flush this consumer knows was requested
            marks_seen = 0
            while proc.is_alive() or ring.available():
                # A mark is queued after its request_flush returned: once it is here, the
                # next read must honour that flush, so nothing written before the mark
                # (ring index below it) may be read after this point.
                while True:
                    try:
                        m = marks.get_nowait()
                    except queue.Empty:
                        break
                    if m >= 0:
                        mark = max(mark, m)
                        marks_seen += 1
                if rng.random() < 0.01:
                    ring.flush()
                got = ring.read_available_into(out[: int(rng.integers(1, 512))])
                index = ring.read_index
                assert index >= last_index
                last_index = index
                expect = (np.arange(index - got, index) % 30000 + 1).astype(np.int16)
                assert np.array_equal(out[:got], expect), "played audio that is not at its index"
                if got:
                    assert index - got >= mark, (
                        f"read index {index - got} written before a flush requested at {mark}")
                read += got
            proc.join(timeout=30)
            assert proc.exitcode == 0
            assert read > total // 4
            assert marks_seen > 10, "the producer's flushes were checked"
        finally:
            if proc.is_alive():
                proc.kill()


def test_attach_by_name_sees_the_same_audio_and_owner_unlinks() -> None:
    with AudioRing.create(64) as owner:
        other = AudioRing.attach(owner.name)
        other.write(np.arange(1, 11, dtype=np.int16))
        out = np.zeros(10, np.int16)
        assert owner.read_into(out) == 10
        assert out.tolist() == list(range(1, 11))
        other.close()
        name = owner.name
    assert not os.path.exists(f"/dev/shm/{name}")


def test_a_flush_read_takes_the_oldest_flushed_frames_and_keeps_what_follows() -> None:
    with AudioRing.create(256) as ring:
        out = np.zeros(40, np.int16)
        assert not ring.flush_pending()
        assert ring.read_flushed_into(out) == 0 and not out.any(), "no flush: nothing"
        ring.write(np.arange(1, 101, dtype=np.int16))
        ring.request_flush()
        ring.write(np.full(10, 7, np.int16))  # written after the flush: plays
        assert ring.flush_pending()
        out[:] = -1
        assert ring.read_flushed_into(out) == 40
        assert out.tolist() == list(range(1, 41))
        assert not ring.flush_pending() and ring.available() == 10
        rest = np.zeros(16, np.int16)
        assert ring.read_into(rest) == 10 and rest.tolist() == [7] * 10 + [0] * 6
        ring.write(np.arange(1, 6, dtype=np.int16))
        ring.request_flush()
        out[:] = -1
        assert ring.read_flushed_into(out) == 5, "fewer flushed than asked: zero-padded"
        assert out.tolist() == [1, 2, 3, 4, 5] + [0] * 35 and ring.available() == 0


def test_segment_unlinked_on_error() -> None:
    with pytest.raises(RuntimeError), AudioRing.create(16) as ring:
        name = ring.name
        raise RuntimeError("boom")
    assert not os.path.exists(f"/dev/shm/{name}")


@pytest.mark.parametrize("bad", [0, 1, 3, 100])
def test_capacity_must_be_a_power_of_two(bad: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        AudioRing.create(bad)


def test_next_power_of_two() -> None:
    assert [next_power_of_two(n) for n in (0, 1, 2, 3, 1000, 1024)] == [2, 2, 2, 4, 1024, 1024]
