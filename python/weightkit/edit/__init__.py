"""Sequential model editing of Hugging Face causal LMs: RLSEdit and baselines, fact requests.

``RLSEditor(model, layers, lam, mu, tokenizer=tok).edit(requests)`` applies edit requests one batch
after another forever, at a cost per edit that does not grow with the number of earlier edits;
``evaluate(requests)`` reports efficacy, generalization, specificity and fluency.
"""

from weightkit.edit.compute import ValueConfig
from weightkit.edit.editor import FineTuneEditor, MEMITEditor, RLSEditor
from weightkit.edit.metrics import evaluate_requests
from weightkit.edit.model_access import TEMPLATES, key_gram

__all__ = ["FineTuneEditor", "MEMITEditor", "RLSEditor", "TEMPLATES", "ValueConfig", "evaluate_requests", "key_gram"]
