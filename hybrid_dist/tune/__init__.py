"""Ray Tune searches over hybrid-batch training: alpha, learning rate, temperature, loss and
batch mode, each trial a distributed Ray Train run of the same ``Trainer`` as
``hybrid_dist.train``, early-stopped by ASHA on a held-out metric.

``python -m hybrid_dist.tune --config ray_configs/<search>.yaml``; see docs/tune.md. Needs the
``tune`` extra (``pip install -e '.[tune]'``)."""
