"""jaxfeat: how many linear logit features does a curve need?

A feature of a sparse autoencoder on the last MLP of a one-layer transformer moves the next-token
logits linearly, ``P = softmax(a l + c)``. jaxfeat fits mixtures of k such features to target
curves p(t), proves what one feature can and cannot do, and certifies how many a curve needs.
"""

from . import bounds as bounds
from . import distributed as distributed
from . import sae as sae
from . import targets as targets
from . import theory as theory
from . import toy as toy
from ._count import RequiredFeatures as RequiredFeatures
from ._count import affine_rank as affine_rank
from ._count import predicted_features as predicted_features
from ._count import required_features as required_features
from ._count import required_features_batch as required_features_batch
from ._fit import FitResult as FitResult
from ._fit import chunk_targets as chunk_targets
from ._fit import fit as fit
from ._fit import fit_batch as fit_batch
from ._fit import fit_ks as fit_ks
from ._hinge import SolverSettings as SolverSettings
from ._io import read_curve as read_curve
from ._model import Features as Features
from ._model import activations as activations
from ._model import kl as kl
from ._model import log_probs as log_probs
from ._model import logits as logits
from ._model import mean_kl as mean_kl
from ._model import probs as probs
from ._target import Target as Target
from .bounds import SegmentationBound as SegmentationBound
from .bounds import segmentation_lower_bound as segmentation_lower_bound

__version__ = "0.2.0"
