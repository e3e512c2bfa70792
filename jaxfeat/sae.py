"""Sparse autoencoders: SAELens files, the forward pass, logit effects and the feature family
that carries a latent.

- :class:`SAE`, :func:`encode`, :func:`decode`, :func:`pre_activations`: SAELens's conventions and
  forward pass, as a pytree and pure functions.
- :func:`load_saelens`, :func:`save_saelens`: SAELens's directories, without torch.
- :func:`logit_effects`: each feature's effect on the next-token logits.
- :func:`feature_family`, :class:`FeatureFamily`, :func:`plot_family`: the features that carry a
  latent, their curve, and how many of them the curve needs.

>>> import jax.numpy as jnp
>>> import jaxfeat.sae as js
>>> js.encode(js.SAE(jnp.eye(2), jnp.zeros(2), jnp.eye(2), jnp.zeros(2)), jnp.array([1.0, -1.0]))
Array([1., 0.], dtype=float32)
"""

from ._family import FeatureFamily as FeatureFamily
from ._family import feature_family as feature_family
from ._family import plot_family as plot_family
from ._sae import SAE as SAE
from ._sae import decode as decode
from ._sae import encode as encode
from ._sae import logit_effects as logit_effects
from ._sae import pre_activations as pre_activations
from ._saelens import load_saelens as load_saelens
from ._saelens import save_saelens as save_saelens
