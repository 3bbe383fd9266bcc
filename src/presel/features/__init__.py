"""Image features for selection (step 2.1): each distinct image embedded once into a resumable store.

Public API::

    from presel.features import EmbedConfig, embed_pool, load_feature_matrix
    stats = embed_pool(pool, "feats/", EmbedConfig(model="dinov2-small", image_size=112))
    fm = load_feature_matrix("feats/")       # presel.io.features.FeatureMatrix, ids = image keys

Heavy libraries (torch, transformers, onnxruntime, ray) are imported only when extraction runs.
"""

from presel.features.extract import EmbedConfig, embed_pool
from presel.features.store import load_feature_matrix

__all__ = ["EmbedConfig", "embed_pool", "load_feature_matrix"]
