"""influence: influence functions for language models (Grosse et al. 2023) as a plain library.

from influence import LanguageModelTask, Query, encode_queries, fit_curvature, compute_scores
task = LanguageModelTask()
curvature = fit_curvature(model, task, {"input_ids": ids, "attention_mask": mask}, method="ekfac")
queries = encode_queries(tokenizer, [Query("q", "The capital of France is", " Paris")])
result = compute_scores(model, task, curvature, queries, {"input_ids": ids, "attention_mask": mask})
result.scores  # (queries, training sequences)
compute_scores(..., per_answer_token=True).answer_token_scores  # (queries, sequences, completion tokens): sums to scores
"""

from .arguments import PBRFArguments, ScanArguments
from .curvature import CURVATURES, Curvature, get_curvature_class
from .errors import InfluenceError
from .filtering import BM25Index, NoOverlapWarning
from .fitting import fit_curvature, load_curvature
from .gradients import AnswerTokens, expand_answer_tokens
from .lowrank import LowRank, plan_query_rank
from .modules import TrackedLayer, find_tracked_layers
from .passes import capture_batches
from .pbrf import PBRFResult, pbrf_scores
from .queries import Query, context_length, encode_queries
from .scan import ScanResult, TopBreakdown, scan, scores_at_ranks, top_k_breakdown
from .scoring import SCALE_CONVENTION, InfluenceScores, compute_scores, precondition_queries, score_captured
from .tasks import ClassificationTask, LanguageModelTask, RegressionTask, TabularTask, Task

__all__ = [
    "AnswerTokens",
    "BM25Index",
    "CURVATURES",
    "ClassificationTask",
    "Curvature",
    "InfluenceError",
    "InfluenceScores",
    "LanguageModelTask",
    "LowRank",
    "NoOverlapWarning",
    "PBRFArguments",
    "PBRFResult",
    "Query",
    "RegressionTask",
    "SCALE_CONVENTION",
    "ScanArguments",
    "ScanResult",
    "TabularTask",
    "Task",
    "TopBreakdown",
    "TrackedLayer",
    "capture_batches",
    "compute_scores",
    "context_length",
    "encode_queries",
    "expand_answer_tokens",
    "find_tracked_layers",
    "fit_curvature",
    "get_curvature_class",
    "load_curvature",
    "pbrf_scores",
    "plan_query_rank",
    "precondition_queries",
    "scan",
    "score_captured",
    "scores_at_ranks",
    "top_k_breakdown",
]
