"""``callctl.cli``: the ``callctl`` command, one module per command (``main`` dispatches).

Above the GUI, the public API (``callctl.Client``) and the controller: the CLI
imports them, never the other way round. ``callctl gui`` loads the GUI only when
it is asked for.
"""
