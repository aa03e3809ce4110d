"""Reusable multimodal layers: attention, blocks, fusion, encoders, action heads, mixture-of-experts, losses.

Every class keeps the name and constructor arguments of the chapter "Foundations of Multimodal Learning";
``docs/chapter.md`` maps each one to its module and lists what was fixed. Mask convention everywhere: boolean,
True = valid token / may attend / present.
"""

from vlafoundry.nn._checks import check_finite, check_finite_enabled, set_check_finite
from vlafoundry.nn.action import ActionDecoder, ActionEncoder, ActionSequenceProcessor, ActionTokenizer
from vlafoundry.nn.attention import CrossModalAttention, FeedForward, MultiHeadAttention
from vlafoundry.nn.features import FourierFeatures
from vlafoundry.nn.blocks import FFNFactory, MultimodalEncoder, MultimodalTransformerBlock, TransformerEncoderBlock
from vlafoundry.nn.fusion import (
    EarlyFusion,
    FiLMFusion,
    LateFusion,
    MultimodalFusionNetwork,
    VisionLanguageFusion,
    masked_mean_pool,
)
from vlafoundry.nn.language import LanguageEncoder, TextProcessingModule, TextTokenizer, default_language_model_path
from vlafoundry.nn.losses import ContrastiveLoss, MultimodalContrastiveLearning, MultimodalPretrainingTask
from vlafoundry.nn.matching import AttributeMatching, named_values
from vlafoundry.nn.moe import ConditionalComputationGate, MultimodalMixtureOfExperts
from vlafoundry.nn.vision import (
    GRID_COLOR_NAMES,
    GRID_COLOURED_OBJECTS,
    GRID_OBJECT_NAMES,
    ConvStem,
    SinCosPositionCache,
    SymbolicGridEncoder,
    VisionEncoder,
    get_1d_sincos_pos_embed,
    get_2d_sincos_pos_embed,
    images_to_tensor,
)

__all__ = [
    "GRID_COLOR_NAMES", "GRID_COLOURED_OBJECTS", "GRID_OBJECT_NAMES",
    "FourierFeatures",
    "ActionDecoder", "ActionEncoder", "ActionSequenceProcessor", "ActionTokenizer", "AttributeMatching",
    "ConditionalComputationGate", "ContrastiveLoss", "ConvStem", "CrossModalAttention", "EarlyFusion", "FFNFactory",
    "FeedForward", "FiLMFusion", "LanguageEncoder", "LateFusion", "MultiHeadAttention",
    "MultimodalContrastiveLearning", "MultimodalEncoder", "MultimodalFusionNetwork", "MultimodalMixtureOfExperts",
    "MultimodalPretrainingTask", "MultimodalTransformerBlock", "SinCosPositionCache", "SymbolicGridEncoder",
    "TextProcessingModule", "TextTokenizer", "TransformerEncoderBlock", "VisionEncoder", "VisionLanguageFusion",
    "check_finite", "check_finite_enabled", "default_language_model_path", "get_1d_sincos_pos_embed",
    "get_2d_sincos_pos_embed", "images_to_tensor", "masked_mean_pool", "named_values", "set_check_finite",
]
