"""Evaluation: the chapter's MultimodalEvaluator, closed-loop rollouts, offline metrics, robustness, reports."""

from vlafoundry.eval.evaluator import MultimodalEvaluator
from vlafoundry.eval.offline import modality_balance, offline_bias, offline_evaluation, offline_metrics
from vlafoundry.eval.options import EvalError, EvalOptions, EvalOptionsError
from vlafoundry.eval.paraphrase import ParaphraseMap, load_paraphrases
from vlafoundry.eval.pipeline import EvalRun, evaluate_checkpoint, run_evaluation
from vlafoundry.eval.report import ReportInputs, write_report
from vlafoundry.eval.robustness import run_robustness
from vlafoundry.eval.rollout import EvalResult, ObservationCorruption, VectorRollout, evaluate_policy
from vlafoundry.eval.stats import wilson_interval

__all__ = [
    "EvalError", "EvalOptions", "EvalOptionsError", "EvalResult", "EvalRun", "MultimodalEvaluator",
    "ObservationCorruption", "ParaphraseMap", "ReportInputs", "VectorRollout", "evaluate_checkpoint",
    "evaluate_policy", "load_paraphrases", "modality_balance", "offline_bias", "offline_evaluation",
    "offline_metrics", "run_evaluation", "run_robustness", "wilson_interval", "write_report",
]
