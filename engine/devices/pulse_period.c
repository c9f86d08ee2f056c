/* The native PulseAudio backend's hot path in C (callctl.engine.devices._pulse_period):
 * a call's ordinary periods -- the timed wait, the mainloop's dispatch, the
 * microphone's copy, the handler's call and the write -- with the interpreter
 * entered only for the handler.
 *
 * Why C: on the test rig (a 2-core virtual machine) the audio thread's loop in
 * Python cost about half of its CPU in the interpreter and ctypes (perf, a
 * silence-only call), for work that is a timed wait, a dozen libpulse calls
 * and a memcpy a period. Everything that is not an ordinary period (a call's
 * first, a deferred hangup, flags for the handler, an underrun, microphone
 * that came late) goes back to Python (engine/devices/pulse.py, PulseDevice._call),
 * which does that period itself.
 *
 * Contract: every function takes the address of a PeriodState that the Python
 * side owns (a ctypes.Structure, mirrored field by field; LAYOUT below lets it
 * check the mirror at import). Only the device's audio thread calls them, as
 * libpulse wants: one thread per mainloop. libpulse is reached through the
 * entry points the Python side looked up (no libpulse headers needed to build).
 * Units: frames (= int16 samples, mono), seconds of CLOCK_MONOTONIC (what
 * Python's time.monotonic() reads).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int (*iterate_fn)(void *mainloop, int block, int *retval);
typedef int (*peek_fn)(void *stream, const void **data, size_t *nbytes);
typedef int (*drop_fn)(void *stream);
typedef int (*write_fn)(void *stream, const void *data, size_t nbytes, void *free_cb,
                        int64_t offset, int seek);

typedef struct {
    /* libpulse: entry points and objects (set by Python at each open). */
    void *iterate, *peek, *drop, *write;
    void *mainloop, *record, *playback;
    /* Buffers, owned by Python (numpy arrays that live as long as the device). */
    int16_t *capture;        /* microphone received, not yet handed to the handler */
    int16_t *history;        /* everything written, at written % history_frames */
    int64_t capture_frames;  /* capacity of capture */
    int64_t history_frames;  /* capacity of history, a power of two */
    int64_t period_frames;
    /* State: read and written by both sides, on the audio thread only. */
    int64_t capture_fill;    /* frames in capture, from its start */
    int64_t written;         /* frames written to the playback stream since it opened */
    double due;              /* when the next period's microphone is due; < 0: none known */
    double woke;             /* out: when the last wait ended */
    double wake_slack;       /* s after due that the wait ends */
    double wake_creep;       /* s each period's due moves earlier than the last */
    double period_s;         /* period_frames in seconds */
    double last_ok;          /* when the last period was served */
    double late_max;         /* out: the latest a period's write left after its due */
    double gap_max;          /* out: the longest time between two served periods */
    int64_t session;         /* the call the device serves (PulseDevice._session) */
    int64_t deepen;          /* frames of silence still to add to the playback queue, in
                                the call's silent periods once it has sounded (deepen) */
    int32_t kick_fd;         /* an eventfd the control thread writes to wake the thread */
    int32_t overrun;         /* out: set when microphone was dropped (capture full) */
    int32_t active;          /* the handler may be called (PulseDevice._active) */
    int32_t need_prime;      /* the next write must prime the playback queue first */
    int32_t await_write;     /* a hangup waits for the next write (PulseDevice._defer) */
    int32_t underflowed;     /* the server said the playback queue ran dry */
    int32_t status;          /* flags for the handler's next call */
    int32_t pending;         /* a fade request waits: served before the handler's next call
                                (unless it waits for the next write, await_write) */
    int32_t sounded;         /* a period with sound has been written this call */
} PeriodState;

enum { READY = 0, KICKED = 1, SHORT = 2, PERIOD = 3, STOPPED = 4, REFILL = 5,
       READ_FAILED = -1, WRITE_FAILED = -2, HANDLER_FAILED = -3 };

static double monotonic(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* The record stream's data into capture, without waiting. A hole in the stream
 * (data NULL) is silence. When capture is full the newest is kept. */
static int pull(PeriodState *s)
{
    peek_fn peek = (peek_fn)s->peek;
    drop_fn drop = (drop_fn)s->drop;
    int64_t fill = s->capture_fill;
    int rc = READY;
    for (;;) {
        const void *data = NULL;
        size_t nbytes = 0;
        if (peek(s->record, &data, &nbytes) < 0) {
            rc = READ_FAILED;
            break;
        }
        int64_t n = (int64_t)(nbytes >> 1);
        if (n == 0)
            break;
        if (fill + n > s->capture_frames) {
            if (n > s->capture_frames)
                n = s->capture_frames;
            int64_t keep = fill < s->capture_frames - n ? fill : s->capture_frames - n;
            memmove(s->capture, s->capture + (fill - keep), (size_t)keep * 2);
            fill = keep;
            s->overrun = 1;
        }
        if (data)
            memcpy(s->capture + fill, data, (size_t)n * 2);
        else
            memset(s->capture + fill, 0, (size_t)n * 2);
        fill += n;
        if (drop(s->record) < 0) {
            rc = READ_FAILED;
            break;
        }
    }
    s->capture_fill = fill;
    return rc;
}

/* Sleep until due (a kick ends it early), take in what the server sent (at most
 * 64 mainloop iterations, none of them waiting), then the microphone. */
static int wait_and_pull(PeriodState *s)
{
    double now = monotonic();
    double until = s->due + s->wake_slack;
    if (s->due >= 0 && until > now) {
        double wait = until - now;
        struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
        struct pollfd kick = {s->kick_fd, POLLIN, 0};
        int r = ppoll(&kick, 1, &ts, NULL);
        now = monotonic();
        if (r > 0) {
            uint64_t count;
            if (read(s->kick_fd, &count, sizeof count) < 0 && errno != EAGAIN)
                return READ_FAILED;
            s->woke = now;
            return KICKED;
        }
    }
    s->woke = now;
    iterate_fn iterate = (iterate_fn)s->iterate;
    for (int i = 0; i < 64; i++)
        if (iterate(s->mainloop, 0, NULL) <= 0)
            break;
    int rc = pull(s);
    if (rc != READY)
        return rc;
    return s->capture_fill >= s->period_frames ? READY : SHORT;
}

/* frames at samples to the playback stream and to the history ring. */
static int write_out(PeriodState *s, const int16_t *samples, int64_t frames, int64_t offset,
                     int seek)
{
    write_fn write_ = (write_fn)s->write;
    if (write_(s->playback, samples, (size_t)frames * 2, NULL, offset, seek) < 0)
        return WRITE_FAILED;
    int64_t mask = s->history_frames - 1;
    int64_t done = 0;
    while (done < frames) {
        int64_t pos = (s->written + done) & mask;
        int64_t n = s->history_frames - pos;
        if (n > frames - done)
            n = frames - done;
        memcpy(s->history + pos, samples + done, (size_t)n * 2);
        done += n;
    }
    s->written += frames;
    return READY;
}

/* After a period's write: how late it left, the next period's due (moved earlier by
 * wake_creep, so that a wake-up now and then comes before the data and waits for it:
 * that arrival re-locks the schedule to the server's clock), the longest gap.
 * due: this period's due as it was before the period (< 0: none); now: its wake-up. */
static void finish_period(PeriodState *s, double due, double now)
{
    if (due >= 0) {
        double late = monotonic() - due - s->wake_slack;
        if (late > s->late_max)
            s->late_max = late;
    }
    s->due = (due < 0 ? now : due) + s->period_s - s->wake_creep;
    if (now - s->last_ok > s->gap_max)
        s->gap_max = now - s->last_ok;
    s->last_ok = now;
}

static void *state_of(PyObject *address)
{
    void *s = PyLong_AsVoidPtr(address);
    if (s == NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "a PeriodState address, not 0");
    return s;
}

static PyObject *py_finish_period(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "finish_period(state, due, woke)");
        return NULL;
    }
    PeriodState *s = state_of(args[0]);
    if (s == NULL)
        return NULL;
    double due = PyFloat_AsDouble(args[1]), now = PyFloat_AsDouble(args[2]);
    if (PyErr_Occurred())
        return NULL;
    finish_period(s, due, now);
    Py_RETURN_NONE;
}

static PyObject *py_pull(PyObject *module, PyObject *address)
{
    PeriodState *s = state_of(address);
    if (s == NULL)
        return NULL;
    return PyLong_FromLong(pull(s));
}

static PyObject *py_write(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "write(state, samples, frames, offset, seek)");
        return NULL;
    }
    PeriodState *s = state_of(args[0]);
    if (s == NULL)
        return NULL;
    const int16_t *samples = PyLong_AsVoidPtr(args[1]);
    long long frames = PyLong_AsLongLong(args[2]);
    long long offset = PyLong_AsLongLong(args[3]);
    long seek = PyLong_AsLong(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (frames < 0 || (frames > 0 && samples == NULL)) {
        PyErr_SetString(PyExc_ValueError, "frames must be >= 0, samples an address");
        return NULL;
    }
    return PyLong_FromLong(write_out(s, samples, frames, offset, (int)seek));
}

/* After a period's write (out_ptr, a period): while the queue is to grow (s->deepen),
 * a silent period is followed by up to a period more of silence, once the call has
 * sounded. Silence only: a pause in the agent's voice is drawn out, no sound is moved
 * against another; the call's first sound, which the caller waits for, is not put off. */
static int deepen(PeriodState *s, const int16_t *out_ptr)
{
    int64_t p = s->period_frames;
    for (int64_t i = 0; i < p; i++) {
        if (out_ptr[i]) {
            s->sounded = 1;
            return READY;
        }
    }
    if (!s->sounded)
        return READY;
    int64_t n = s->deepen < p ? s->deepen : p;
    int rc = write_out(s, out_ptr, n, 0, 0);  /* out_ptr holds n zeros */
    if (rc == READY)
        s->deepen -= n;
    return rc;
}

/* One ordinary period's handler call and write, under the device's io lock
 * (acquire, release: its bound methods), as PulseDevice._call does it. */
static int serve_period(PeriodState *s, int64_t session, PyObject *handler, PyObject *mic,
                        PyObject *out, const int16_t *out_ptr, PyObject *acquire,
                        PyObject *release, PyObject *zero)
{
    PyObject *r = PyObject_CallNoArgs(acquire);
    if (r == NULL)
        return HANDLER_FAILED;
    Py_DECREF(r);
    int rc = READY;
    if (!s->active || s->session != session || (s->pending && !s->await_write)) {
        rc = STOPPED;
    } else {
        PyObject *args[3] = {mic, out, zero};
        r = PyObject_Vectorcall(handler, args, 3, NULL);
        if (r == NULL)
            rc = HANDLER_FAILED;
        else {
            Py_DECREF(r);
            rc = write_out(s, out_ptr, s->period_frames, 0, 0);
            if (rc == READY && s->deepen > 0)
                rc = deepen(s, out_ptr);
        }
    }
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);  /* the handler's, kept across release */
    r = PyObject_CallNoArgs(release);
    if (r == NULL) {
        Py_XDECREF(exc_type);
        Py_XDECREF(exc_value);
        Py_XDECREF(exc_tb);
        return HANDLER_FAILED;
    }
    Py_DECREF(r);
    PyErr_Restore(exc_type, exc_value, exc_tb);
    return rc;
}

/* A call's ordinary periods, until one is not (see the header): run_periods(state,
 * session, handler, mic, out, out_address, acquire, release). mic is the head of
 * state.capture (a period), out the handler's output (a period, at out_address). */
static PyObject *py_run_periods(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "run_periods(state, session, handler, mic, out, out_address, "
                        "acquire, release)");
        return NULL;
    }
    PeriodState *s = state_of(args[0]);
    if (s == NULL)
        return NULL;
    long long session = PyLong_AsLongLong(args[1]);
    const int16_t *out_ptr = PyLong_AsVoidPtr(args[5]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *handler = args[2], *mic = args[3], *out = args[4];
    PyObject *acquire = args[6], *release = args[7];
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL)
        return NULL;
    iterate_fn iterate = (iterate_fn)s->iterate;
    int64_t p = s->period_frames;
    int rc;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = wait_and_pull(s);
        Py_END_ALLOW_THREADS
        if (rc != READY)
            break;
        if (handler == Py_None || s->need_prime || s->await_write || s->underflowed
            || s->status || s->overrun) {
            rc = PERIOD;
            break;
        }
        double due = s->due, now = s->woke;
        while (s->capture_fill >= p) {
            rc = serve_period(s, session, handler, mic, out, out_ptr, acquire, release, zero);
            if (rc != READY)
                break;
            s->capture_fill -= p;
            if (s->capture_fill)
                memmove(s->capture, s->capture + p, (size_t)s->capture_fill * 2);
        }
        if (rc != READY)
            break;
        iterate(s->mainloop, 0, NULL);  /* the writes leave now */
        finish_period(s, due, now);
        if (s->underflowed) {
            rc = REFILL;
            break;
        }
    }
    Py_DECREF(zero);
    if (rc == HANDLER_FAILED)
        return NULL;
    return PyLong_FromLong(rc);
}

static PyMethodDef methods[] = {
    {"run_periods", (PyCFunction)(void (*)(void))py_run_periods, METH_FASTCALL,
     "run_periods(state, session, handler, mic, out, out_address, acquire, release) -> "
     "KICKED, SHORT, PERIOD, STOPPED, REFILL, READ_FAILED or WRITE_FAILED: a call's "
     "ordinary periods, until one needs Python; the handler's exception propagates."},
    {"finish_period", (PyCFunction)(void (*)(void))py_finish_period, METH_FASTCALL,
     "finish_period(state, due, woke): after a period served in Python, the schedule's "
     "bookkeeping run_periods does after its own (late_max, due, gap_max, last_ok)."},
    {"pull", py_pull, METH_O,
     "pull(state) -> READY or READ_FAILED: the microphone into state.capture, no wait."},
    {"write", (PyCFunction)(void (*)(void))py_write, METH_FASTCALL,
     "write(state, samples, frames, offset, seek) -> READY or WRITE_FAILED: frames at the "
     "address samples to the playback stream (pa_stream_write), and to state.history."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_pulse_period",
    "The native PulseAudio backend's once-a-period work in C (see pulse_period.c).",
    -1, methods,
};

#define FIELD(name) {#name, offsetof(PeriodState, name)}

PyMODINIT_FUNC PyInit__pulse_period(void)
{
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    static const struct { const char *name; size_t offset; } fields[] = {
        FIELD(iterate), FIELD(peek), FIELD(drop), FIELD(write),
        FIELD(mainloop), FIELD(record), FIELD(playback),
        FIELD(capture), FIELD(history), FIELD(capture_frames), FIELD(history_frames),
        FIELD(period_frames), FIELD(capture_fill), FIELD(written), FIELD(due),
        FIELD(woke), FIELD(wake_slack), FIELD(wake_creep), FIELD(period_s), FIELD(last_ok),
        FIELD(late_max), FIELD(gap_max), FIELD(session), FIELD(deepen), FIELD(kick_fd), FIELD(overrun),
        FIELD(active), FIELD(need_prime), FIELD(await_write), FIELD(underflowed),
        FIELD(status), FIELD(pending), FIELD(sounded),
    };
    PyObject *layout = PyDict_New();
    if (layout == NULL)
        goto fail;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        PyObject *offset = PyLong_FromSize_t(fields[i].offset);
        if (offset == NULL || PyDict_SetItemString(layout, fields[i].name, offset) < 0) {
            Py_XDECREF(offset);
            Py_DECREF(layout);
            goto fail;
        }
        Py_DECREF(offset);
    }
    if (PyModule_AddObject(m, "LAYOUT", layout) < 0) {
        Py_DECREF(layout);
        goto fail;
    }
    if (PyModule_AddIntConstant(m, "SIZE", (long)sizeof(PeriodState)) < 0
        || PyModule_AddIntConstant(m, "READY", READY) < 0
        || PyModule_AddIntConstant(m, "KICKED", KICKED) < 0
        || PyModule_AddIntConstant(m, "SHORT", SHORT) < 0
        || PyModule_AddIntConstant(m, "PERIOD", PERIOD) < 0
        || PyModule_AddIntConstant(m, "STOPPED", STOPPED) < 0
        || PyModule_AddIntConstant(m, "REFILL", REFILL) < 0
        || PyModule_AddIntConstant(m, "READ_FAILED", READ_FAILED) < 0
        || PyModule_AddIntConstant(m, "WRITE_FAILED", WRITE_FAILED) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
