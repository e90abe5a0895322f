"""influence: influence functions for language models (Grosse et al. 2023) as a plain library.

    from influence import LanguageModelTask, Query, encode_queries, fit_curvature, compute_scores
    task = LanguageModelTask()
    curvature = fit_curvature(model, task, {"input_ids": ids, "attention_mask": mask}, method="ekfac")
    queries = encode_queries(tokenizer, [Query("q", "The capital of France is", " Paris")])
    result = compute_scores(model, task, curvature, queries, {"input_ids": ids, "attention_mask": mask})
    result.scores  # (queries, training sequences)
"""
from .curvature import CURVATURES, Curvature, get_curvature_class
from .errors import InfluenceError
from .filtering import BM25Index, NoOverlapWarning
from .fitting import fit_curvature, load_curvature
from .lowrank import LowRank, plan_query_rank
from .scan import ScanResult, TopBreakdown, scan, scores_at_ranks, top_k_breakdown
from .modules import TrackedLayer, find_tracked_layers
from .queries import Query, context_length, encode_queries
from .scoring import SCALE_CONVENTION, InfluenceScores, compute_scores, precondition_queries, score_captured
from .tasks import ClassificationTask, LanguageModelTask, RegressionTask, TabularTask, Task

__all__ = [
    "BM25Index", "LowRank", "NoOverlapWarning", "ScanResult", "TopBreakdown", "plan_query_rank", "scan",
    "scores_at_ranks", "top_k_breakdown", "CURVATURES", "ClassificationTask", "Curvature", "InfluenceError", "InfluenceScores", "LanguageModelTask",
    "Query", "RegressionTask", "context_length", "SCALE_CONVENTION", "TabularTask", "Task", "TrackedLayer", "compute_scores", "encode_queries",
    "find_tracked_layers", "fit_curvature", "get_curvature_class", "load_curvature", "precondition_queries",
    "score_captured",
]
