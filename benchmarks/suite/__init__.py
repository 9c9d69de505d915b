"""The seeded head-to-head: suites declared as data, a resumable parallel runner, evaluation, reports.

One concept per module:

* ``spec``: what a suite is (data sets x method entries x variants x budgets x seeds x sampling steps)
  and the suites themselves (``SUITES``);
* ``jobs``: a suite expanded into jobs (one training run each) with their upstream runs;
* ``train``: one job's training, resumed or reused, stopped at each evaluation point;
* ``toy_eval`` / ``mnist_eval``: the measurements of one trained model, as records;
* ``records``: JSON-lines records under ``docs/results/`` (the committed data);
* ``stats``: means and 95% Student-t intervals over seeds;
* ``runner``: the scheduler (parallel worker processes, one thread each);
* ``report``: docs/results.md sections, README tables and curve plots, generated from the records;
* ``diagnose``: why k MeanFlow steps lose to one (error of u against a reference flow per interval).

Run ``python -m benchmarks.suite --help``.
"""
