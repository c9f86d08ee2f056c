/* The echo canceller's frames in C (callctl.engine._echo_batch): WebRTC's audio
 * processing module, reached through LiveKit's FFI, run on several 10 ms frames
 * back to back with the interpreter left once.
 *
 * Why C: per frame the canceller sends LiveKit's FFI three requests (the far
 * end, the stream delay, the near end; engine/echo.py, _DirectApm, serialises
 * them once). Through ctypes each costs a foreign call, a reply copy and a
 * handle drop, and each foreign call lets go of the GIL and takes it back: on
 * the test rig that Python was a measurable part of the audio thread's CPU
 * beside WebRTC's own work (bench/echo.py, bench/audio_threads.py).
 *
 * Contract: cancel() is called by the one thread that runs the canceller (the
 * native PulseAudio backend's audio thread, through InlineEcho). The buffers
 * are owned by Python and outlive the call: the APM's two frame buffers (the
 * requests point at them), the frames in and out, and the statistics window.
 * The GIL is released for the whole batch: nothing here touches a Python
 * object between taking the arguments and building the result.
 * Units: samples (int16, mono, 16 kHz), microseconds of CLOCK_MONOTONIC.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef uint64_t (*request_fn)(const uint8_t *data, size_t len, const uint8_t **reply,
                               size_t *reply_len);
typedef int (*drop_handle_fn)(uint64_t handle);

#define REQUESTS 3

static double micros(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

static int address(PyObject *o, void **out)
{
    *out = PyLong_AsVoidPtr(o);
    return !(*out == NULL && PyErr_Occurred());
}

/* cancel(request, drop, requests, far, near, frame, mic, ref, out, frames, cpu_us,
 *        window, index) -> (done, failed, reply)
 * request, drop: the addresses of livekit_ffi_request and livekit_ffi_drop_handle.
 * requests: three (request, expected reply) pairs of bytes, sent in order per frame.
 * far, near: the addresses of the APM's int16 frame buffers, `frame` samples each.
 * mic, ref, out: addresses of `frames` frames in a row; out may be mic.
 * cpu_us, window, index: each frame's time goes to cpu_us[(index + i) % window].
 * done: frames cancelled into out. failed: -1, or which request of frame `done`
 * got a reply that was not the expected one (reply: its bytes; else None). */
static PyObject *py_cancel(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 13) {
        PyErr_SetString(PyExc_TypeError, "cancel takes 13 arguments");
        return NULL;
    }
    void *request_p, *drop_p, *far_p, *near_p, *mic_p, *ref_p, *out_p, *cpu_p;
    if (!address(args[0], &request_p) || !address(args[1], &drop_p)
        || !address(args[3], &far_p) || !address(args[4], &near_p)
        || !address(args[6], &mic_p) || !address(args[7], &ref_p)
        || !address(args[8], &out_p) || !address(args[10], &cpu_p))
        return NULL;
    Py_ssize_t frame = PyLong_AsSsize_t(args[5]);
    Py_ssize_t frames = PyLong_AsSsize_t(args[9]);
    Py_ssize_t window = PyLong_AsSsize_t(args[11]);
    Py_ssize_t index = PyLong_AsSsize_t(args[12]);
    if (PyErr_Occurred())
        return NULL;
    if (frame <= 0 || frames < 0 || window <= 0 || index < 0) {
        PyErr_SetString(PyExc_ValueError, "cancel: bad frame, frames, window or index");
        return NULL;
    }
    PyObject *requests = args[2];
    if (!PyTuple_Check(requests) || PyTuple_GET_SIZE(requests) != REQUESTS) {
        PyErr_SetString(PyExc_TypeError, "cancel: requests must be a tuple of three pairs");
        return NULL;
    }
    const uint8_t *raw[REQUESTS], *done[REQUESTS];
    size_t raw_len[REQUESTS], done_len[REQUESTS];
    for (int k = 0; k < REQUESTS; k++) {
        PyObject *pair = PyTuple_GET_ITEM(requests, k);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2
            || !PyBytes_Check(PyTuple_GET_ITEM(pair, 0))
            || !PyBytes_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "cancel: each request is (bytes, bytes)");
            return NULL;
        }
        raw[k] = (const uint8_t *)PyBytes_AS_STRING(PyTuple_GET_ITEM(pair, 0));
        raw_len[k] = (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 0));
        done[k] = (const uint8_t *)PyBytes_AS_STRING(PyTuple_GET_ITEM(pair, 1));
        done_len[k] = (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 1));
    }
    request_fn request = (request_fn)request_p;
    drop_handle_fn drop = (drop_handle_fn)drop_p;
    int16_t *far = far_p, *near = near_p, *mic = mic_p, *ref = ref_p, *out = out_p;
    double *cpu_us = cpu_p;
    size_t bytes = (size_t)frame * 2;
    Py_ssize_t cancelled = 0;
    int failed = -1;
    uint8_t *reply_copy = NULL;
    size_t reply_copy_len = 0;

    /* The requests and the bytes they point at stay alive: the caller holds them. */
    Py_BEGIN_ALLOW_THREADS
    for (; cancelled < frames && failed < 0; cancelled++) {
        double began = micros();
        size_t at = (size_t)cancelled * (size_t)frame;
        memcpy(far, ref + at, bytes);
        memcpy(near, mic + at, bytes);
        for (int k = 0; k < REQUESTS; k++) {
            const uint8_t *reply = NULL;
            size_t reply_len = 0;
            uint64_t handle = request(raw[k], raw_len[k], &reply, &reply_len);
            if (reply_len != done_len[k] || (reply_len && memcmp(reply, done[k], reply_len))) {
                failed = k;
                reply_copy = malloc(reply_len ? reply_len : 1);
                if (reply_copy != NULL && reply_len) {
                    memcpy(reply_copy, reply, reply_len);
                    reply_copy_len = reply_len;
                }
            }
            drop(handle);
            if (failed >= 0)
                break;
        }
        if (failed >= 0)
            break;
        memcpy(out + at, near, bytes);
        cpu_us[(index + cancelled) % window] = micros() - began;
    }
    Py_END_ALLOW_THREADS

    PyObject *reply = Py_None;
    Py_INCREF(reply);
    if (failed >= 0) {
        Py_DECREF(reply);
        reply = PyBytes_FromStringAndSize((const char *)reply_copy, (Py_ssize_t)reply_copy_len);
        free(reply_copy);
        if (reply == NULL)
            return NULL;
    }
    PyObject *result = Py_BuildValue("(niN)", cancelled, failed, reply);
    return result;
}

static PyMethodDef methods[] = {
    {"cancel", (PyCFunction)(void (*)(void))py_cancel, METH_FASTCALL,
     "cancel(request, drop, requests, far, near, frame, mic, ref, out, frames, cpu_us, "
     "window, index) -> (done, failed, reply): frames through the APM's three FFI requests "
     "each, back to back, the GIL released (see echo_batch.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_echo_batch",
    "The echo canceller's frames in C (see echo_batch.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__echo_batch(void)
{
    return PyModule_Create(&module_def);
}
