"""Demonstration data: expert generation into Minari datasets, a training cache, PyTorch datasets."""

from vlafoundry.data.collate import collate
from vlafoundry.data.dataset import DemoDataset, EpisodeDataset, PairDataset, make_dataset, split_episodes
from vlafoundry.data.format import META_FILE, SCHEMA_VERSION, dataset_id_for
from vlafoundry.data.generate import GenerationResult, generate_dataset
from vlafoundry.data.transforms import ColourPermutation, ModalityDropout, stable_text_id
from vlafoundry.data.verify import inspect_dataset, load_minari, verify_dataset

__all__ = [
    "ColourPermutation",
    "DemoDataset",
    "EpisodeDataset",
    "GenerationResult",
    "META_FILE",
    "ModalityDropout",
    "PairDataset",
    "SCHEMA_VERSION",
    "collate",
    "dataset_id_for",
    "generate_dataset",
    "inspect_dataset",
    "load_minari",
    "make_dataset",
    "split_episodes",
    "stable_text_id",
    "verify_dataset",
]
