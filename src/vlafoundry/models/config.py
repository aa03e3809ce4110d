"""Policy configurations: one dataclass per policy type (LeRobot style), all deriving from :class:`ModelConfig`.

``ModelConfig.type`` names the policy class in the registry (:mod:`vlafoundry.models.registry`); the config
loader builds the subclass that type registered (``model: {type: onehot_mlp, hidden: 256}`` in a YAML preset),
so a new policy type brings its own config keys without touching the others'."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlafoundry.config import require

VISION_KINDS = ("grid", "patch", "none")
LANGUAGE_KINDS = ("scratch", "pretrained", "none")
MEMORY_KINDS = ("none", "gru")
GROUNDING_KINDS = ("none", "attributes")
CELL_TOKENS = ("none", "replace", "add")
POSITION_TOKENS = ("none", "add")


@dataclass
class ModelConfig:
    """What every policy config has: ``type``, the registered policy type it configures."""

    type: str = "vla"

    def dataset_view(self) -> dict[str, Any]:
        """The ``DemoDataset`` arguments this policy's samples need (frames per sample, first-frame anchor, action
        chunk, whole episodes); the default is one frame, one action, independent samples."""
        return {"history": 1, "anchor_first": False, "chunk": 1, "sequence": False}

    @classmethod
    def config_class_for(cls, data: dict[str, Any], key: str) -> type:
        """The config dataclass of the policy type ``data["type"]`` names (used by the config loader)."""
        from vlafoundry.models.registry import policy_class

        return policy_class(str(data.get("type", "vla")), key=f"{key}.type").config_class


@dataclass
class ModalityDropoutConfig:
    """Probability of dropping each modality per training sample (the policy then sees a learned placeholder)."""

    image: float = 0.0
    instruction: float = 0.0
    state: float = 0.0

    def __post_init__(self) -> None:
        for k in ("image", "instruction", "state"):
            v = getattr(self, k)
            require(0.0 <= v < 1.0, f"model.modality_dropout.{k}", "a probability in [0, 1)", v)


@dataclass
class PolicyConfig(ModelConfig):
    """Architecture of a VLA policy (``type: vla``), every piece drawn from ``vlafoundry.nn``.

    vision: ``grid`` embeds BabyAI's symbolic 7x7x3 view per cell (49 tokens); ``patch`` is the ViT-style
    :class:`~vlafoundry.nn.VisionEncoder` over RGB images (``patch_size`` pixels a side per token; frames
    ``(K, H, W, 3)`` from K cameras become K token groups with a learned camera embedding); ``none`` for
    state-only benchmarks.
    vision_stem: how ``patch`` turns pixels into tokens: ``patch`` (the ViT's one strided convolution), ``conv``
    (a small convolutional stem, :class:`~vlafoundry.nn.vision.ConvStem`; ``patch_size`` a power of two) or ``mlp``
    (the patch projection then a per-token MLP layer, :class:`~vlafoundry.nn.vision.PatchMLPStem`).
    cell_labels: with ``patch``, a training-only head that reads each patch token and predicts the labels of the
    cell it shows (``loss.cells``): ``minigrid``, the symbolic view's object type, colour and state of each BabyAI
    tile (read from the frame, :mod:`vlafoundry.envs.babyai_cells`); ``none``, no head.
    cell_tokens: with ``cell_labels``, what the cell head's predictions do to the patch tokens: ``replace`` (each
    cell's token becomes its predicted label distributions embedded, ``sum_a softmax(logits_a) @ E_a``, plus its
    position: a learnt symbolic bottleneck, the grid encoder's tokens computed from pixels), ``add`` (that
    embedding added to the patch token), ``none`` (the head only trains the tokens, through ``loss.cells``).
    position_labels: with ``patch``, a training-only head on the vision CLS token that regresses where the scene's
    objects and goal are (``loss.positions``): ``metaworld``, the first and second object's and the goal's xyz (what
    the 4-D hand proprioception of pixel data leaves out; recovered by replaying the demonstrations,
    :mod:`vlafoundry.data.replay`); ``none``, no head.
    position_tokens: with ``position_labels`` and ``use_state``: ``add``, the head's predicted positions (Fourier
    features, an MLP) are added to the state token, so the policy reads them as the state policy reads the true
    ones; ``none``, the head only trains the vision encoder.
    patch_norm: LayerNorm on each patch token before the positions are added (timm's ``PatchEmbed`` norm option).
    image_shift: random-shift augmentation in training (DrQ; :func:`~vlafoundry.nn.augment.random_shift`): each
    sample's frames move by up to this many pixels (0 = off), each camera by its own offset. Needs ``vision`` ``patch``.
    language: ``scratch`` is :class:`~vlafoundry.nn.TextProcessingModule` with a tokenizer trained on the
    dataset's instructions; ``pretrained`` is the frozen MiniLM :class:`~vlafoundry.nn.LanguageEncoder`
    (``language_adapter``: width of its optional trainable residual adapter, 0 = none). ``instruction_snap``
    (``pretrained`` only, acting only): an instruction that is not one of the training data's is replaced by the
    training instruction nearest to it in MiniLM's sentence-embedding space (:mod:`vlafoundry.models.grounding`),
    so a new phrasing reaches the policy as a phrasing it was trained on. For tasks named by a fixed set of
    phrasings (Meta-World); wrong where new instructions are new compositions (a held-out colour-object pair
    would be snapped to a trained pair).
    fusion: ``cross_attention`` (the chapter's MultimodalEncoder), ``early``, ``late`` or ``film``.
    grounding: ``attributes`` adds to every cell token, before fusion, features of how well the cell's object type
        and its colour each match the instruction (:class:`~vlafoundry.nn.matching.AttributeMatching`: one score per
        attribute, and their product), so a colour-object pair never named in training is matched from its parts.
        Needs ``vision`` ``grid`` and a language modality. ``none``: the fusion alone relates words and cells.
    grounding_readout: how the match scores reach the cell tokens (``AttributeMatching``'s ``readout``):
        ``sigmoid`` (each attribute's score and their product of sigmoids) or ``softmax`` (one attention over the
        frame's cells of the summed scores).
    grounding_dropout: with ``grounding``, the probability that a training row's fusion reads no instruction (its
        placeholder instead) while the grounding still does, so those rows' actions must come from the matched
        cells. Without it the fusion can fit the training pairs by itself and, for some training seeds, leaves the
        matching unlearnt (docs/benchmarks.md, held-out compositions). ``1``: the fusion never reads the
        instruction, in training or acting; it reaches the policy through the matched cells alone (for missions
        that only name a target, such as GoTo's).
    head: ``discrete`` logits, ``continuous`` ActionDecoder with chunks of ``chunk`` steps, ``binned`` action
    tokens (ActionTokenizer), ``flow`` (flow matching) or ``diffusion`` (DDPM/DDIM) over the chunk
    (:mod:`vlafoundry.models.generative`), or ``auto`` (discrete for discrete action spaces, continuous otherwise).
    anchor_first: with ``history`` >= 2, the oldest history slot always holds the episode's first observation
        (the view the instruction refers to: "the key on your left" means left of where the agent started), the
        other slots the latest frames: a one-frame memory at the cost of one extra frame.
    state_fourier: octaves of fixed Fourier features (:class:`~vlafoundry.nn.FourierFeatures`) added to the
        normalised state before its MLP (0 = raw state only); lets a continuous policy tell apart states a few
        millimetres apart, where a scripted expert switches behaviour.
    memory: ``gru``: a recurrent memory over the episode. Each step's fused features go through a GRU whose state
        is carried from the episode's first step (training on whole episodes, ``EpisodeDataset``, with
        ``train.batch_size`` counting episodes; acting with one hidden state per env, cleared by ``reset``).
        For what one frame cannot show: where the agent started ("the ball behind you"), rooms seen earlier,
        a detour already begun. Needs ``history`` 1 and ``chunk`` 1. ``none``: no memory.
    action_selection: how ``select_action`` picks discrete/binned actions: ``greedy`` (argmax) or ``sample`` (from
    the softmax at ``sample_temperature``, with the policy's own generator, re-seeded by ``reset()``, so a rollout
    is reproducible). Sampling breaks the loops a deterministic cloned policy can fall into.
    execute: receding horizon: act on the first ``execute`` actions of each predicted chunk, then predict a new one
        (0: the whole chunk).
    ensemble: ACT's temporal ensembling (continuous heads): predict a chunk every ``execute`` steps (1 when
        ``execute`` is 0) and act on the weighted mean of every chunk's prediction for the current step, weights
        ``exp(-ensemble_decay * i)`` with i = 0 the oldest prediction.
    gen_hidden, gen_layers: width and residual blocks of the ``flow`` / ``diffusion`` heads' denoiser MLP.
    flow_steps: Euler integration steps of ``head flow`` when acting (settable on a loaded policy's ``cfg``).
    diffusion_steps: DDIM steps of ``head diffusion`` when acting; ``diffusion_train_steps`` noise levels in
        training, ``diffusion_schedule`` ``cosine`` or ``linear`` betas.
    """

    vision: str = "grid"
    language: str = "scratch"
    fusion: str = "film"
    head: str = "auto"
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int = 256
    dropout: float = 0.0
    vision_layers: int = 1
    text_layers: int = 1
    tokenizer: str = "word"
    tokenizer_vocab: int = 1000
    patch_size: int = 8
    vision_stem: str = "patch"
    cell_labels: str = "none"
    cell_tokens: str = "none"
    position_labels: str = "none"
    position_tokens: str = "none"
    patch_norm: bool = False
    image_shift: int = 0
    use_state: bool = True
    state_fourier: int = 0
    history: int = 1
    anchor_first: bool = False
    chunk: int = 1
    memory: str = "none"
    num_bins: int = 256
    embed_dim: int = 64
    moe: bool = False
    num_experts: int = 4
    moe_top_k: int = 2
    moe_capacity_factor: float = 1.25
    pretrained_model: str | None = None
    language_adapter: int = 0
    instruction_snap: bool = False
    grounding: str = "none"
    grounding_dropout: float = 0.0
    grounding_readout: str = "sigmoid"
    action_selection: str = "greedy"
    sample_temperature: float = 1.0
    execute: int = 0
    ensemble: bool = False
    ensemble_decay: float = 0.01
    gen_hidden: int = 256
    gen_layers: int = 3
    flow_steps: int = 10
    diffusion_steps: int = 10
    diffusion_train_steps: int = 100
    diffusion_schedule: str = "cosine"
    modality_dropout: ModalityDropoutConfig = field(default_factory=ModalityDropoutConfig)

    def dataset_view(self) -> dict[str, Any]:
        """The ``DemoDataset`` arguments that must match this policy's inputs (frames per sample, first-frame
        anchor, action chunk), for every place that builds its training or held-out samples."""
        return {"history": self.history, "anchor_first": self.anchor_first, "chunk": self.chunk,
                "sequence": self.memory != "none"}

    def __post_init__(self) -> None:
        from vlafoundry.models.components import FUSIONS, HEADS
        from vlafoundry.nn.matching import READOUTS
        from vlafoundry.nn.vision import CELL_LABEL_CLASSES, POSITION_LABEL_DIMS, STEMS

        require(self.type == "vla", "model.type", "'vla' for PolicyConfig", self.type)
        require(self.vision in VISION_KINDS, "model.vision", f"one of {list(VISION_KINDS)}", self.vision)
        require(self.language in LANGUAGE_KINDS, "model.language", f"one of {list(LANGUAGE_KINDS)}", self.language)
        require(self.fusion in FUSIONS, "model.fusion", f"one of {FUSIONS.names()}", self.fusion)
        require(self.head == "auto" or self.head in HEADS, "model.head", f"one of {['auto', *HEADS.names()]}",
                self.head)
        require(self.action_selection in ("greedy", "sample"), "model.action_selection", "one of ['greedy', 'sample']",
                self.action_selection)
        require(self.sample_temperature > 0, "model.sample_temperature", "a number > 0", self.sample_temperature)
        require(0 <= self.execute <= self.chunk, "model.execute", f"an integer in [0, model.chunk={self.chunk}]",
                self.execute)
        require(self.ensemble_decay >= 0, "model.ensemble_decay", "a number >= 0", self.ensemble_decay)
        require(not self.ensemble or self.memory == "none", "model.ensemble", "false with a memory (chunk 1)",
                self.ensemble)
        for k in ("gen_hidden", "gen_layers", "flow_steps", "diffusion_steps", "diffusion_train_steps"):
            require(getattr(self, k) >= 1, f"model.{k}", "an integer >= 1", getattr(self, k))
        require(self.diffusion_schedule in ("cosine", "linear"), "model.diffusion_schedule",
                "one of ['cosine', 'linear']", self.diffusion_schedule)
        require(self.vision_stem in STEMS, "model.vision_stem", f"one of {list(STEMS)}", self.vision_stem)
        require(self.vision_stem != "conv" or (self.patch_size >= 2 and self.patch_size & (self.patch_size - 1) == 0),
                "model.patch_size", "a power of two >= 2 with model.vision_stem=conv", self.patch_size)
        require(self.image_shift >= 0, "model.image_shift", "an integer >= 0", self.image_shift)
        require(self.cell_labels in ("none", *CELL_LABEL_CLASSES), "model.cell_labels",
                f"one of {['none', *CELL_LABEL_CLASSES]}", self.cell_labels)
        require(self.cell_tokens in CELL_TOKENS, "model.cell_tokens", f"one of {list(CELL_TOKENS)}", self.cell_tokens)
        require(self.cell_tokens == "none" or self.cell_labels != "none", "model.cell_tokens",
                "'none' unless model.cell_labels names the labels (got model.cell_labels='none')", self.cell_tokens)
        require(self.cell_labels == "none" or (self.vision == "patch" and self.image_shift == 0), "model.cell_labels",
                f"'none' unless model.vision is 'patch' with model.image_shift 0 (a shifted frame's patches are not "
                f"its cells; got model.vision={self.vision!r}, model.image_shift={self.image_shift})",
                self.cell_labels)
        require(self.position_labels in ("none", *POSITION_LABEL_DIMS), "model.position_labels",
                f"one of {['none', *POSITION_LABEL_DIMS]}", self.position_labels)
        require(self.position_labels == "none" or self.vision == "patch", "model.position_labels",
                f"'none' unless model.vision is 'patch' (the head reads the ViT's CLS token; got "
                f"model.vision={self.vision!r})", self.position_labels)
        require(self.position_tokens in POSITION_TOKENS, "model.position_tokens", f"one of {list(POSITION_TOKENS)}",
                self.position_tokens)
        require(self.position_tokens == "none" or (self.position_labels != "none" and self.use_state),
                "model.position_tokens", "'none' unless model.position_labels names the labels and model.use_state "
                f"is on (the predicted positions join the state token; got model.position_labels="
                f"{self.position_labels!r}, model.use_state={self.use_state})", self.position_tokens)
        require(self.image_shift == 0 or self.vision == "patch", "model.image_shift",
                f"0 unless model.vision is 'patch' (got model.vision={self.vision!r})", self.image_shift)
        require(self.tokenizer in ("word", "bpe"), "model.tokenizer", "one of ['word', 'bpe']", self.tokenizer)
        for k in ("d_model", "num_heads", "d_ff", "history", "chunk", "embed_dim", "patch_size", "tokenizer_vocab"):
            require(getattr(self, k) >= 1, f"model.{k}", "an integer >= 1", getattr(self, k))
        for k in ("num_layers", "vision_layers", "text_layers", "state_fourier", "language_adapter"):
            require(getattr(self, k) >= 0, f"model.{k}", "an integer >= 0", getattr(self, k))
        require(self.d_model % self.num_heads == 0, "model.d_model",
                f"a multiple of model.num_heads={self.num_heads}", self.d_model)
        require(self.d_model % 4 == 0, "model.d_model", "a multiple of 4 (2-D sin-cos positions)", self.d_model)
        require(0.0 <= self.dropout < 1.0, "model.dropout", "a probability in [0, 1)", self.dropout)
        require(not self.anchor_first or self.history >= 2, "model.anchor_first",
                "false, or model.history >= 2 (the first frame plus the latest)", self.anchor_first)
        require(self.language_adapter == 0 or self.language == "pretrained", "model.language_adapter",
                f"0 unless model.language is 'pretrained' (got model.language={self.language!r})",
                self.language_adapter)
        require(not self.instruction_snap or self.language == "pretrained", "model.instruction_snap",
                f"false unless model.language is 'pretrained' (got model.language={self.language!r})",
                self.instruction_snap)
        require(self.grounding in GROUNDING_KINDS, "model.grounding", f"one of {list(GROUNDING_KINDS)}", self.grounding)
        require(self.grounding == "none" or (self.vision == "grid" and self.language != "none"), "model.grounding",
                f"'none' unless model.vision is 'grid' and a language modality is on (got model.vision="
                f"{self.vision!r}, model.language={self.language!r})", self.grounding)
        require(self.grounding_readout in READOUTS, "model.grounding_readout", f"one of {list(READOUTS)}",
                self.grounding_readout)
        require(0.0 <= self.grounding_dropout <= 1.0, "model.grounding_dropout", "a probability in [0, 1]",
                self.grounding_dropout)
        require(self.grounding_dropout == 0 or self.grounding != "none", "model.grounding_dropout",
                "0 unless model.grounding is on (got model.grounding='none')", self.grounding_dropout)
        require(self.memory in MEMORY_KINDS, "model.memory", f"one of {list(MEMORY_KINDS)}", self.memory)
        require(self.memory == "none" or (self.history == 1 and self.chunk == 1), "model.memory",
                f"'none' with model.history={self.history} and model.chunk={self.chunk} (a memory needs both 1)",
                self.memory)
        require(self.num_bins >= 2, "model.num_bins", "an integer >= 2", self.num_bins)
        require(self.num_experts >= 1, "model.num_experts", "an integer >= 1", self.num_experts)
        require(1 <= self.moe_top_k <= self.num_experts, "model.moe_top_k",
                f"an integer in [1, num_experts={self.num_experts}]", self.moe_top_k)
        require(self.moe_capacity_factor > 0, "model.moe_capacity_factor", "a number > 0", self.moe_capacity_factor)
        require(not (self.vision == "none" and self.language == "none" and not self.use_state), "model",
                "at least one input modality", "vision=none, language=none, use_state=false")
