"""Domain packages built on the pydiff core (installed as ``pydiff.domains``).

Each domain imports only ``pydiff`` (never another domain). The domains that exist:
``pydiff.domains.speech`` (diffusion speech enhancement: SGMSE+, StoRM, MR samplers),
``pydiff.domains.policy`` (diffusion policies and planners for control) and
``pydiff.domains.medical`` (CT and MRI reconstruction; so far its forward operators).
"""
