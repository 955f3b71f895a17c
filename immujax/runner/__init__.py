"""The run machinery of the experiment binaries, in one place.

Every binary in ``experiments/`` is thin: flags and config in, one call into
:mod:`immujax.studies`, results out. What all of them share lives here, one module per job:

=====================  ==============================================================
:mod:`.cli`            the absl edge: flag definitions, ``--help`` generated from the
                       config, one-line errors (``error: ...``, exit status 2)
:mod:`.validate`       checks of flag and config values, messages naming the flag
:mod:`.workdir`        workdir claims, resume checks (config and data), ``--move_aside``
:mod:`.provenance`     what a run was computed from: data fingerprint, versions, devices
:mod:`.checkpoints`    versioned orbax checkpoints with a per-version migration table
:mod:`.loop`           the chunked driver (checkpoint and progress between chunks)
:mod:`.progress`       progress lines with an ETA
:mod:`.metrics_log`    per-step terms: TensorBoard, ``metrics.jsonl``, per-run arrays
:mod:`.outputs`        atomic JSON / text / figure writes with the user's umask
:mod:`.distributed`    several processes (``jax.distributed``), gathering, placement
:mod:`.devices`        the CPU device layout, set before JAX starts
=====================  ==============================================================

Apart from :mod:`.cli` (which parses the flags and prints the one-line errors) and
:mod:`.progress` (which prints to the stream it is handed), nothing here reads flags,
environment variables or paths it was not handed.
"""
