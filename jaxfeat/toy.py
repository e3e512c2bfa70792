"""Toy models: small transformers trained on text driven by a known latent, and their SAEs.

- :func:`make_corpus`, :class:`Corpus`: documents whose cue is followed by a token drawn from a
  :class:`jaxfeat.Target`'s p(t), with background text (a Markov chain and the ``</p>`` context).
- :func:`train`, :class:`ToyModel`, :class:`ToyConfig`, :func:`apply`, :func:`init_params`,
  :func:`load_params`, :func:`load_model`: the transformer (1 or 2 layers, attention and a
  final LayerNorm optional) as weights plus pure functions, trained with AdamW.
- :func:`train_sae`: standard, TopK or JumpReLU SAEs trained on the model's MLP outputs.

>>> import jaxfeat
>>> from jaxfeat import toy
>>> toy.make_corpus(jaxfeat.targets.temperature(n=8), n_docs=10).tokens.shape
(10, 12)
"""

from ._corpus import Corpus as Corpus
from ._corpus import make_corpus as make_corpus
from ._toy import ToyConfig as ToyConfig
from ._toy import ToyModel as ToyModel
from ._toy import apply as apply
from ._toy import init_params as init_params
from ._toy import load_model as load_model
from ._toy import load_params as load_params
from ._toy import train as train
from ._toy import train_sae as train_sae
