"""The experiment layer: sweeps, the results store, figures and the command line.

Everything here is built on jaxfeat's public API alone (``import jaxfeat``), as a user's own
experiments would be; the library core never imports this package.

* :mod:`jaxfeat.experiments.store`: resumable, atomically written results files.
* :mod:`jaxfeat.experiments.sweeps`: the feature-count sweeps and their summary.
* :mod:`jaxfeat.experiments.commands`: ``jaxfeat count`` and ``jaxfeat fit`` on a curve file.
* :mod:`jaxfeat.experiments.plots`: figures drawn from results files (the seed's too).
* :mod:`jaxfeat.experiments.cli`: the ``jaxfeat`` command (``reproduce``, ``count``, ``fit``).
"""
