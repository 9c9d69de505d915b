"""The training loop's phases, each a module over one `meanflow.training.run_state.RunState`:

    build       build.py       parts, loader, network and its weights, optimizer, EMAs, target, teacher
    resume      resume.py      the checkpoint's weights, EMAs, target, optimizer, data order and step
    run folder  run_folder.py  the run folder, its config files and the log (rank 0)
    step        step.py        one optimizer step: batch, forward, backward (update.py: guard, update,
                               EMAs, target)
    periodic    periodic.py    after each step: log (log.py), replica check, sample grid (samples.py),
                               checkpoint (save.py)
    finish      finish.py      final sample grid, 2-D evaluation (evaluate.py), loss plot

`meanflow.training.loop` strings them together; `docs/design.md` says what each may touch.
"""
