"""PriorSAM model components (docs/architecture.md); each file holds one component."""
from .binary_path import BinaryPromptPath
from .fusion import MultiLevelFusion
from .image_encoder import EncoderFeatures, LiteImageEncoder, ViTBImageEncoder, build_image_encoder
from .lora import LoRALinear, apply_lora
from .losses import PriorSAMLoss
from .mask_optimizer import IterativeMaskOptimizer
from .prior_aligner import PriorAligner
from .priorsam import PriorSAM
from .semantic_decoder import SemanticAwareDecoder

__all__ = [
    "BinaryPromptPath", "EncoderFeatures", "IterativeMaskOptimizer", "LiteImageEncoder", "LoRALinear",
    "MultiLevelFusion", "PriorAligner", "PriorSAM", "PriorSAMLoss", "SemanticAwareDecoder",
    "ViTBImageEncoder", "apply_lora", "build_image_encoder",
]
