"""callctl: voice-agent calls on a multiprocess audio engine, controlled over ZeroMQ.

The installed package is this namespace alone:

* ``callctl.engine``: the audio process, the agent process and what they share
  (rings, the protocol, the devices);
* ``callctl.controller``: the supervisor that runs a call;
* ``callctl.gui``: the PyQt window.

In the repository these are the top-level folders ``engine/``, ``controller/`` and
``gui/``; ``callctl/engine`` and the others are links to them, so a checkout imports
exactly what a wheel installs.
"""

__version__ = "0.1.0"
