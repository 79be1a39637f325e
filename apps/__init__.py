"""The ``pydiff`` command line (installed as ``pydiff.apps``)."""
