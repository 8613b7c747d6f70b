"""Every parameter a search space suggests reaches the fitted estimator under a name the library honours.

The old system tuned parameters under names its library silently ignored. Here each library is asked
for its own, effective configuration after fitting (LightGBM's model string, XGBoost's saved config,
scikit-learn's fitted trees), and every suggested key must map to a value found there.
"""

import json
import warnings

import numpy as np
import optuna
import pytest

from models.base import MODEL_NAMES, build_model
from train.tune import SPACES

# sklearn-API name -> name in LightGBM's model string "[name: value]" section.
LGBM_NAMES = {
    "learning_rate": "learning_rate",
    "num_leaves": "num_leaves",
    "max_depth": "max_depth",
    "min_child_samples": "min_data_in_leaf",
    "min_child_weight": "min_sum_hessian_in_leaf",
    "subsample": "bagging_fraction",
    "colsample_bytree": "feature_fraction",
    "reg_alpha": "lambda_l1",
    "reg_lambda": "lambda_l2",
}
# sklearn-API name -> name in XGBoost's saved learner config (tree_train_param).
XGB_NAMES = {
    "learning_rate": "eta",
    "max_depth": "max_depth",
    "min_child_weight": "min_child_weight",
    "subsample": "subsample",
    "colsample_bytree": "colsample_bytree",
    "gamma": "min_split_loss",
    "reg_alpha": "alpha",
    "reg_lambda": "lambda",
}


def _data(seed=0, n=400):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    # imbalanced classes so that class weighting changes the fit
    y = np.where(X[:, 0] > 1.0, 2, np.where(X[:, 0] < -1.2, 0, 1))
    return X, y


def _sampled_params(name, n=4):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(SPACES[name](trial))
        study.tell(trial, 0.0)
    return out


def _lgbm_effective(model) -> dict[str, str]:
    text = model.booster_.model_to_string()
    section = text[text.index("parameters:") : text.index("end of parameters")]
    pairs = [line.strip("[]").split(": ", 1) for line in section.splitlines() if line.startswith("[")]
    return {k: v for k, v in pairs}


def _check_effect_of_class_weight(name, params, X, y):
    """class_weight has to change the fitted model (it is applied, not just stored)."""
    balanced = build_model(name, params | {"class_weight": "balanced"}, n_jobs=1).fit(X, y)
    plain = build_model(name, params | {"class_weight": None}, n_jobs=1).fit(X, y)
    assert not np.allclose(balanced.predict_proba(X), plain.predict_proba(X))
    # balancing raises the predicted share of the rare classes
    assert balanced.predict_proba(X)[:, [0, 2]].mean() > plain.predict_proba(X)[:, [0, 2]].mean()


@pytest.mark.parametrize("params", _sampled_params("lightgbm"))
def test_lightgbm_params_reach_booster(params):
    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # LightGBM warns on unknown parameters
        model = build_model("lightgbm", params, n_jobs=1).fit(X, y)
    effective = _lgbm_effective(model)
    for key, value in params.items():
        if key == "n_estimators":
            assert int(effective["num_iterations"]) == value
        elif key == "class_weight":
            assert model.get_params()["class_weight"] == value
        else:
            assert key in LGBM_NAMES, f"no proof for LightGBM parameter {key}"
            assert float(effective[LGBM_NAMES[key]]) == pytest.approx(value, rel=1e-5), key
    # bagging only works with a positive frequency: otherwise `subsample` would be silently ignored
    assert int(effective["bagging_freq"]) >= 1


@pytest.mark.parametrize("params", _sampled_params("xgboost"))
def test_xgboost_params_reach_booster(params):
    X, y = _data()
    model = build_model("xgboost", params, n_jobs=1).fit(X, y)
    config = json.loads(model.get_booster().save_config())
    effective = config["learner"]["gradient_booster"]["tree_train_param"]
    # XGBoost lists the parameters it was given but does not use; class_weight must not land there.
    assert "class_weight" not in json.dumps(config)
    for key, value in params.items():
        if key == "n_estimators":
            assert model.get_booster().num_boosted_rounds() == value
        elif key == "class_weight":
            assert model.get_params()["class_weight"] == value
        else:
            assert key in XGB_NAMES, f"no proof for XGBoost parameter {key}"
            assert float(effective[XGB_NAMES[key]]) == pytest.approx(value, rel=1e-6), key


@pytest.mark.parametrize("params", _sampled_params("random_forest"))
def test_random_forest_params_reach_trees(params):
    X, y = _data()
    model = build_model("random_forest", params, n_jobs=1).fit(X, y)
    assert len(model.estimators_) == params["n_estimators"]
    tree = model.estimators_[0]
    for key in ("max_depth", "min_samples_split", "min_samples_leaf", "max_features"):
        assert getattr(tree, key) == params[key], key
    assert max(t.get_depth() for t in model.estimators_) <= params["max_depth"]
    assert model.max_samples == params["max_samples"] and model.bootstrap
    assert model.class_weight == params["class_weight"]
    assert set(params) <= set(model.get_params())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_class_weight_is_applied(name):
    X, y = _data()
    params = _sampled_params(name, 1)[0]
    if name == "random_forest":
        params |= {"min_samples_leaf": 5, "max_depth": 4}
    _check_effect_of_class_weight(name, params, X, y)


def test_every_space_key_is_covered():
    """A new search-space key without a proof above fails here, not silently."""
    proven = {
        "lightgbm": set(LGBM_NAMES) | {"n_estimators", "class_weight"},
        "xgboost": set(XGB_NAMES) | {"n_estimators", "class_weight"},
        "random_forest": {
            "n_estimators",
            "max_depth",
            "min_samples_split",
            "min_samples_leaf",
            "max_features",
            "max_samples",
            "class_weight",
        },
    }
    for name in MODEL_NAMES:
        assert set(_sampled_params(name, 1)[0]) <= proven[name], name


def test_unknown_model_name_is_refused():
    with pytest.raises(ValueError, match="unknown model name.*catboost"):
        build_model("catboost", {})
