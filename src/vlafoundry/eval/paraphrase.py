"""Paraphrase files for evaluation (``vlafoundry eval --paraphrases``): the format and :class:`ParaphraseMap` live in
:mod:`vlafoundry.data.paraphrase` (training reads the same format for instruction variants); re-exported here."""

from vlafoundry.data.paraphrase import ParaphraseMap, load_paraphrases

__all__ = ["ParaphraseMap", "load_paraphrases"]
