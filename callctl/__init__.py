"""callctl: voice-agent calls on a multiprocess audio engine, controlled over ZeroMQ.

The public Python API (docs: README.md, "Script a call from Python"):

* ``callctl.Client``: a running controller over the public protocol — ``call()``,
  ``hangup()``, ``status()``, ``events()``;
* ``callctl.serve(...)``: start a controller of your own (``callctl serve`` as a
  child process); ``with callctl.serve(...) as client:`` stops it afterwards;
* the errors ``CallctlError`` (``.code``, ``str()``), ``NotRunning`` (no controller
  answers) and ``Refused`` (an error reply; ``.reply``).

Importing ``callctl`` is cheap: these load on first use.

The installed package is this namespace alone:

* ``callctl.engine``: the audio process, the agent process and what they share
  (rings, the protocol, the devices);
* ``callctl.controller``: the supervisor that runs a call;
* ``callctl.gui``: the PyQt window;
* ``callctl.cli``: the ``callctl`` command.

In the repository these are the top-level folders ``engine/``, ``controller/``,
``gui/`` and ``cli/``; ``callctl/engine`` and the others are links to them, so a
checkout imports exactly what a wheel installs. Layering: cli → gui → this API
(``callctl.client``, ``callctl.served``) → controller → engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callctl.client import CallctlError, Client, EventStream, NotRunning, Refused
    from callctl.served import ServedController, serve

__version__ = "0.1.0"
__all__ = ["CallctlError", "Client", "EventStream", "NotRunning", "Refused",
           "ServedController", "serve"]

_LAZY = {"CallctlError": "callctl.client", "Client": "callctl.client",
         "EventStream": "callctl.client", "NotRunning": "callctl.client",
         "Refused": "callctl.client", "ServedController": "callctl.served",
         "serve": "callctl.served"}


def __getattr__(name: str) -> Any:
    # PEP 562: pyzmq and the controller's modules load only when the API is used.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'callctl' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
