"""The ground floor every stage stands on: the workspace and its catalog, the config dataclasses, the
job lifecycle, progress events, errors, the embedded defaults, the machine's facts and the process
group of data-parallel runs. Nothing here imports a later stage."""
