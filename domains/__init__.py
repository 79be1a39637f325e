"""Domain packages built on the pydiff core (installed as ``pydiff.domains``).

Each domain imports only ``pydiff`` (never another domain): ``pydiff.domains.speech``,
``pydiff.domains.medical``, ``pydiff.domains.policy``, ``pydiff.domains.molecules``,
``pydiff.domains.timeseries``.
"""
