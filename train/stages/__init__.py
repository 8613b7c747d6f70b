"""The pipeline's stages, one module each: ``tune``, ``fit``, ``assess``, ``report``, ``register``.

Each stage computes and returns values (its dataclass: ``Tuned``, ``Fitted``, ``Evaluation`` ...) in
plain functions that the pipeline (``train.pipeline``), the walk-forward (``train.walkforward``), the tune
workers (``train.tune``) and the benches share. What goes to MLflow or to the console is kept apart, in
``log_...`` and ``print_...`` functions and in each stage's logged wrapper (``tune``, ``fit_ensemble``,
``evaluate``, ``report``, ``register``), which only the pipeline calls. ``inputs`` logs what a pipeline
run read and ``timing`` measures the stages.
"""
