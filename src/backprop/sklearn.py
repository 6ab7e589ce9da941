"""scikit-learn estimators: ``MLPClassifier`` and ``MLPRegressor`` trained by backprop.

Drop-in counterparts of :class:`sklearn.neural_network.MLPClassifier` / ``MLPRegressor`` (same parameters,
fitted attributes and stopping rule) whose network is a :class:`backprop.nn.Sequential` (``model_``) trained
with backprop's optimizers (``optimizer_``). They work in pipelines, grid searches, ``cross_val_score``,
``clone`` and ``pickle`` like any scikit-learn estimator.

>>> import numpy as np
>>> from backprop.sklearn import MLPClassifier
>>> X = np.random.default_rng(0).normal(size=(200, 2))
>>> y = np.where(X[:, 0] * X[:, 1] > 0, "same", "different")      # XOR of the signs, string labels
>>> clf = MLPClassifier((16,), learning_rate_init=0.02, tol=1e-3, random_state=0).fit(X, y)
>>> clf.classes_.tolist(), clf.score(X, y) > 0.9
(['different', 'same'], True)

Differences from scikit-learn's MLP, on purpose:

* ``partial_fit`` and ``warm_start=True`` keep the optimizer's state (Adam's moments and step count, SGD's
  momentum buffers), so that training resumes where it stopped: two ``partial_fit`` calls are one ``fit`` of
  two epochs (same ``random_state``, same batches). scikit-learn restarts the optimizer on a warm start.
  Hyperparameters changed with ``set_params`` between calls (``learning_rate_init``, ``beta_1``...) are
  applied to the kept optimizer; a changed ``solver`` or ``optimizer`` builds a new one.
* no ``lbfgs`` solver (``solver`` is ``"sgd"`` or ``"adam"``), hence no ``max_fun``. ``activation`` also
  takes backprop's ``"gelu"`` and ``"leaky_relu"``; ``dropout`` adds dropout after every hidden layer;
  ``optimizer``, a callable ``params -> backprop.optim.Optimizer`` (a class, ``functools.partial``...),
  replaces ``solver`` and its hyperparameters (``learning_rate_init``, ``momentum``, ``beta_1``...). Use a
  picklable callable (not a lambda) if the estimator is to be pickled.
* the updates are PyTorch's (backprop's ``SGD`` and ``Adam``): the same as scikit-learn's for SGD with
  (Nesterov) momentum at a constant learning rate; Adam adds ``epsilon`` to ``sqrt(v_hat)`` instead of to
  ``sqrt(v)`` with the step size folded in, a difference of order ``epsilon``.
* ``distributed=True``: run the script under ``mpiexec -n P`` (``pip install "backprop[mpi]"``), every rank
  calling ``fit`` on the same data; each batch (``batch_size`` divisible by P) is split over the ranks and
  their gradients summed (:mod:`backprop.distributed`), so the fitted network is the single-process one
  (same ``random_state``; rank 0's seed is used when it is None), to rounding. Only rank 0 prints and warns.
* ``jit=True`` (default): each training step is captured once per batch shape and replayed
  (:func:`backprop.jit`), with the same results; ``jit=False`` runs it eagerly.
* ``random_state`` seeds the estimator's own generators (initialisation, shuffling, dropout, the early
  stopping split), which continue across ``partial_fit`` calls; ``random_state=None`` draws the seed from
  backprop's global generator, so ``bp.manual_seed`` makes such runs reproducible too.

The L2 penalty is scikit-learn's: ``alpha / 2 * sum ||W||^2`` over the weight matrices (not the biases),
divided by the batch's number of samples (its sum of sample weights), added to the mean loss of the batch,
so its gradient is ``alpha * W / n_batch``; ``loss_curve_`` includes it. Losses: cross-entropy on softmax
outputs (multiclass), binary cross-entropy on logistic outputs summed over the outputs (binary: one output
unit; multilabel), half the squared error averaged over the outputs (regression; scikit-learn reports that
loss but follows the gradient of the sum) or half the Poisson deviance with a log link (``loss="poisson"``).

Types: ``X`` is float64 unless it is float32 (then the network, ``predict_proba`` and ``coefs_`` are
float32); sparse ``X`` (CSR/CSC) is densified one batch at a time. BLAS threads are left to the caller:
joblib already limits them to one per worker in ``GridSearchCV(n_jobs=...)``; use
``threadpoolctl.threadpool_limits`` to choose otherwise.
"""

from __future__ import annotations

import math
import warnings
from itertools import pairwise
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from backprop import optim
from backprop.data.loader import DataLoader
from backprop.distributed import DataParallelStep
from backprop.distributed import init as mpi_init
from backprop.engine.random import get_rng
from backprop.engine.tensor import Tensor, no_grad
from backprop.nn import functional as F
from backprop.nn import init
from backprop.nn.layers import GELU, Dropout, Identity, LeakyReLU, Linear, ReLU, Sigmoid, Tanh
from backprop.nn.losses import per_sample_loss, weighted_loss
from backprop.nn.module import Module, Sequential
from backprop.training.callbacks import Callback
from backprop.training.jit import captured
from backprop.training.loop import Batch, Batches, CallbackList, Loop, Step

__all__ = ["MLPClassifier", "MLPRegressor"]

#: Hidden-layer activations: scikit-learn's names, plus backprop's gelu and leaky_relu.
ACTIVATIONS: dict[str, type[Module]] = {
    "identity": Identity, "logistic": Sigmoid, "tanh": Tanh, "relu": ReLU, "gelu": GELU, "leaky_relu": LeakyReLU,
}
_PREDICT_BATCH = 4096


def _rows(X: Any, idx: Any, dtype: np.dtype) -> np.ndarray:
    """Rows ``idx`` of X (dense or sparse) as a dense C-ordered array of ``dtype``."""
    if sp.issparse(X):
        return np.ascontiguousarray(X[idx].toarray(), dtype=dtype)
    return np.ascontiguousarray(X[idx], dtype=dtype)


def _seed_from(random_state: Any) -> int:
    """An integer seed from None (backprop's global generator), an int or a RandomState."""
    if random_state is None:
        return int(get_rng().integers(2**63))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    return int(random_state)


class _BaseMLP(BaseEstimator):
    """Shared parameters, network, training loop and stopping rule of the two estimators."""

    _parameter_constraints: ClassVar[dict] = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "solver": [StrOptions({"sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "optimizer": [callable, None],
        "distributed": ["boolean"],
        "jit": ["boolean"],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, dropout=0.0, optimizer=None, distributed=False,
                 jit=True):
        # NOTE: scikit-learn reads MLPClassifier's hyperparameters from this signature, which it inherits;
        # MLPRegressor repeats it with `loss` first and passes the rest here
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dropout = dropout
        self.optimizer = optimizer
        self.distributed = distributed
        self.jit = jit

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    # --------------------------------------------------------------------------------- fitted views
    @property
    def coefs_(self) -> list[np.ndarray]:
        """The weight matrices in scikit-learn's layout, (n_in, n_out): views of the network's weights."""
        check_is_fitted(self)
        return [lin.weight.data.T for lin in self._linears()]

    @coefs_.setter
    def coefs_(self, coefs: list[Any]) -> None:
        self._assign([lin.weight.data for lin in self._linears()], [np.asarray(c).T for c in coefs], "coefs_")

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """The bias vectors (the network's own arrays)."""
        check_is_fitted(self)
        return [lin.bias.data for lin in self._linears()]

    @intercepts_.setter
    def intercepts_(self, intercepts: list[Any]) -> None:
        self._assign([lin.bias.data for lin in self._linears()], [np.asarray(b) for b in intercepts], "intercepts_")

    def _assign(self, targets: list[np.ndarray], values: list[np.ndarray], name: str) -> None:
        """Copy arrays into the network's weights in place (the optimizer keeps referring to them)."""
        check_is_fitted(self)
        if len(values) != len(targets) or any(v.shape != t.shape for v, t in zip(values, targets)):
            raise ValueError(f"{name}: expected {len(targets)} arrays of shapes "
                             f"{[t.shape for t in targets]} in the layout of {name}, got "
                             f"{[v.shape for v in values]} (transposed for coefs_)")
        for t, v in zip(targets, values):
            t[...] = v

    def _linears(self) -> list[Linear]:
        return [m for m in self.model_.layers if isinstance(m, Linear)]

    # ------------------------------------------------------------------------------------- building
    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(isinstance(h, bool) or not isinstance(h, Integral) or h <= 0 for h in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}.")
        return [int(h) for h in sizes]

    def _build_model(self, n_features: int, n_outputs: int, dtype: np.dtype, rng: np.random.Generator) -> None:
        """The network (logits out; the output activation is applied in predict), Glorot-initialised as in sklearn."""
        units = [n_features, *self._hidden_sizes(), n_outputs]
        factor = 2.0 if self.activation == "logistic" else 6.0
        act = ACTIVATIONS[self.activation]
        layers: list[Module] = []
        for i, (fan_in, fan_out) in enumerate(pairwise(units)):
            lin = Linear(fan_in, fan_out, dtype=dtype)
            bound = math.sqrt(factor / (fan_in + fan_out))
            init.uniform_(lin.weight, -bound, bound, rng=rng)
            init.uniform_(lin.bias, -bound, bound, rng=rng)
            layers.append(lin)
            if i < len(units) - 2:
                layers.append(act())
                if self.dropout:
                    layers.append(Dropout(self.dropout))
        self.model_ = Sequential(*layers).eval()
        self.n_layers_ = len(units)

    def _optimizer_spec(self) -> tuple[Any, dict[str, Any]]:
        """(what builds the optimizer, the hyperparameters to set on it)."""
        if self.optimizer is not None:
            return self.optimizer, {}
        if self.solver == "sgd":
            return optim.SGD, {"lr": float(self.learning_rate_init), "momentum": float(self.momentum),
                               "nesterov": bool(self.nesterovs_momentum and self.momentum > 0)}
        return optim.Adam, {"lr": float(self.learning_rate_init), "eps": float(self.epsilon),
                            "betas": (float(self.beta_1), float(self.beta_2))}

    def _prepare_optimizer(self, first_pass: bool, incremental: bool) -> None:
        """A new optimizer on a first fit or a changed solver; otherwise keep its state, refresh its settings."""
        maker, hyper = self._optimizer_spec()
        if first_pass or getattr(self, "optimizer_", None) is None or maker is not self._optimizer_maker:
            params = list(self.model_.parameters())
            self.optimizer_ = optim.get(maker, params, **hyper) if hyper else optim.get(maker, params)
        elif hyper and (not incremental or hyper != self._optimizer_hyper):
            # NOTE: a warm-started fit restarts the learning-rate schedule (as sklearn's fresh optimizer
            # would) but keeps the moments; partial_fit keeps a schedule's lr unless set_params changed it
            for group in self.optimizer_.param_groups:
                group.update(hyper)
        self._optimizer_maker, self._optimizer_hyper = maker, hyper

    # ------------------------------------------------------------------------------------ training
    def _forward(self, x: np.ndarray, training: bool) -> Tensor:
        """The network's output; in training, dropout draws from the estimator's own generator."""
        out: Any = Tensor(x)
        for layer in self.model_.layers:
            if isinstance(layer, Dropout):
                out = F.dropout(out, layer.p, training, rng=self._dropout_rng) if training else out
            else:
                out = layer(out)
        return out

    def _penalty(self) -> Tensor:
        total: Any = 0.0
        for lin in self._linears():
            total = (lin.weight * lin.weight).sum() + total
        return total

    def _check_sample_weight(self, sample_weight: Any, n: int) -> np.ndarray:
        if sample_weight is None:
            return np.ones(n, dtype=np.float64)
        sw = np.asarray(sample_weight)
        if sw.ndim == 0:
            sw = np.full(n, sw)
        if sw.dtype.kind not in "biuf":
            raise ValueError(f"sample_weight must be numbers, got an array of dtype {sw.dtype}.")
        if sw.shape != (n,):
            raise ValueError(f"sample_weight.shape == {sw.shape}, expected {(n,)}!")
        sw = sw.astype(np.float64)
        if not np.isfinite(sw).all() or (sw < 0).any():
            raise ValueError("sample_weight must be finite and non-negative.")
        if not sw.any():
            raise ValueError("Sample weights must contain at least one non-zero number.")
        return sw

    def _fit(self, X: Any, y: Any, sample_weight: Any, incremental: bool) -> _BaseMLP:
        self._validate_params()
        self._hidden_sizes()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first_pass = not hasattr(self, "model_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if sp.issparse(X):
            X = X.tocsr()
        n_samples = X.shape[0]
        sw = self._check_sample_weight(sample_weight, n_samples)
        Y = self._encode_targets(y)  # 1-d class indices (multiclass) or a float matrix (n, n_outputs)

        if first_pass:
            self._initialize(X, self._n_outputs(Y))
        if self.model_.dtype != X.dtype and not sp.issparse(X):
            X = X.astype(self.model_.dtype)
        self._prepare_optimizer(first_pass, incremental)
        self._fit_stochastic(X, Y, sw, y, incremental)

        if not all(np.isfinite(p.data).all() for p in self.model_.parameters()):
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain large "
                             "values and need to be preprocessed.")
        return self

    def _initialize(self, X: Any, n_outputs: int) -> None:
        seed = _seed_from(self.random_state)
        if self.distributed:  # rank 0's seed everywhere: the same weights and batches on every rank
            seed = self._trainer_comm().bcast(seed, root=0)
        seeds = np.random.SeedSequence(seed).spawn(4)
        init_rng = np.random.default_rng(seeds[0])
        self._shuffle_rng = np.random.default_rng(seeds[1])
        self._dropout_rng = np.random.default_rng(seeds[2])
        if self.distributed:  # each rank its own dropout masks for its own rows
            comm = self._trainer_comm()
            self._dropout_rng = np.random.default_rng(seeds[2].spawn(comm.Get_size())[comm.Get_rank()])
        self._split_seed = int(seeds[3].generate_state(1)[0])
        self.n_outputs_ = n_outputs
        self._build_model(X.shape[1], n_outputs, X.dtype, init_rng)
        self.optimizer_ = None
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_: list[float] = []
        self._no_improvement_count = 0
        self._best_state = self.model_.state_dict()
        if self.early_stopping:
            self.validation_scores_: list[float] | None = []
            self.best_validation_score_: float | None = -np.inf
            self.best_loss_: float | None = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = np.inf

    def _split(self, X: Any, Y: np.ndarray, sw: np.ndarray, y: np.ndarray) -> tuple[Any, ...]:
        """scikit-learn's early-stopping split (stratified for single-label classification when it can be)."""
        stratify = None
        if is_classifier(self) and (Y.ndim == 1 or Y.shape[1] == 1):  # not multilabel
            labels = Y if Y.ndim == 1 else Y[:, 0]
            counts = np.unique(labels, return_counts=True)[1]
            n_val = math.ceil(self.validation_fraction * len(labels))
            if counts.min() >= 2 and len(counts) <= n_val <= len(labels) - len(counts):
                stratify = labels
        X_tr, X_val, Y_tr, _, sw_tr, sw_val, _, y_val = train_test_split(
            X, Y, sw, y, test_size=self.validation_fraction, random_state=self._split_seed % 2**32,
            stratify=stratify)
        if X_val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                             "your dataset.")
        return X_tr, Y_tr, sw_tr, X_val, y_val, sw_val

    def _fit_stochastic(self, X: Any, Y: np.ndarray, sw: np.ndarray, y: np.ndarray, incremental: bool) -> None:
        """Epochs of the one training loop (:mod:`backprop.training.loop`) with scikit-learn's step and rules."""
        early_stopping = self.early_stopping
        validation = None
        if early_stopping:
            X, Y, sw, *validation = self._split(X, Y, sw, y)
            if self.validation_scores_ is None:  # early_stopping switched on for a warm start
                self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
        elif self.best_loss_ is None:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = None, None, np.inf
        n_samples = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped",
                              stacklevel=4)
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        # NOTE: the loader draws batches of sample indices with the estimator's generator, which continues
        # from one fit or partial_fit call to the next; a batch of zero-weight samples teaches nothing
        loader = DataLoader(np.arange(n_samples), batch_size=batch_size, shuffle=self.shuffle, seed=self._shuffle_rng)
        data = Batches(X, Y, sw, loader, keep=lambda batch: batch.total > 0.0)
        step: Any = captured(_EstimatorStep(self, weighted=sw is not None), self.jit, fuse=not self.distributed)
        if self.distributed:  # data-parallel: each rank a shard of every batch (backprop.distributed)
            step = DataParallelStep(step, batch_size, comm=self._trainer_comm())
            step.trainer.broadcast()  # NOTE: no seed_ranks: each rank already has its own dropout generator
        self._speaks = step.is_root  # only rank 0 prints and warns
        self.n_iter_ = 0
        rules = _EpochRules(self, n_samples, validation, incremental)
        callbacks = CallbackList([rules], model=self.model_, optimizer=self.optimizer_)
        history = Loop(step, data, epochs=1 if incremental else self.max_iter, callbacks=callbacks).run()
        if history.interrupted:
            warnings.warn("Training interrupted by user.", stacklevel=4)
        if early_stopping:
            self.model_.load_state_dict(self._best_state)

    def _trainer_comm(self) -> Any:
        """MPI.COMM_WORLD, for ``distributed=True`` (a clear ImportError without the mpi extra)."""
        return mpi_init().comm

    def _update_loss(self) -> None:
        """scikit-learn's rule: an epoch improves when its loss is below the best loss minus tol."""
        loss = self.loss_curve_[-1]
        if not loss <= self.best_loss_ - self.tol:  # NaN counts as no improvement
            self._no_improvement_count += 1
        else:
            self._no_improvement_count = 0
        self.best_loss_ = min(self.best_loss_, loss)

    def _update_validation(self, X_val: Any, y_val: np.ndarray, sw_val: np.ndarray) -> None:
        score = self._score(X_val, y_val, sw_val)
        self.validation_scores_.append(score)
        if self.verbose and self._speaks:
            print(f"Validation score: {score:f}")
        if not score >= self.best_validation_score_ + self.tol:
            self._no_improvement_count += 1
        else:
            self._no_improvement_count = 0
        if score > self.best_validation_score_:
            self.best_validation_score_ = score
            self._best_state = self.model_.state_dict()

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer_.param_groups:
            group["lr"] = lr

    def _trigger_stopping(self, msg: str) -> bool:
        """Stop, or with solver="sgd" and learning_rate="adaptive" divide the learning rate by 5 first."""
        adaptive = self.optimizer is None and self.solver == "sgd" and self.learning_rate == "adaptive"
        lr = float(self.optimizer_.param_groups[0]["lr"])
        if not adaptive or lr <= 1e-6:
            if self.verbose and self._speaks:
                print(msg + (" Learning rate too small." if adaptive else "") + " Stopping.")
            return True
        self._set_lr(lr / 5.0)
        if self.verbose and self._speaks:
            print(f"{msg} Setting learning rate to {lr / 5.0:f}")
        return False

    # ---------------------------------------------------------------------------------- prediction
    def _raw_output(self, X: Any) -> np.ndarray:
        """The network's outputs (logits) for validated X, in batches, without a graph."""
        dtype = self.model_.dtype
        if sp.issparse(X):
            X = X.tocsr()
        n = X.shape[0]
        with no_grad():
            outs = [self._forward(_rows(X, slice(i, i + _PREDICT_BATCH), dtype), training=False).data
                    for i in range(0, n, _PREDICT_BATCH)]
        if not outs:
            return np.empty((0, self.n_outputs_), dtype=dtype)
        return np.concatenate(outs)

    def _validated_X(self, X: Any) -> Any:
        check_is_fitted(self)
        return validate_data(self, X, accept_sparse=["csr", "csc"], dtype=(np.float64, np.float32), reset=False)

    def _score(self, X: Any, y: np.ndarray, sample_weight: np.ndarray | None) -> float:
        y_pred = self._predict(X)
        if y_pred.dtype.kind == "f" and not np.isfinite(y_pred).all():
            return np.nan
        return float(self._score_function(y, y_pred, sample_weight=sample_weight))


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by backprop (the API of sklearn's ``MLPClassifier``).

    Multiclass targets get a softmax output trained with cross-entropy; binary targets one logistic output,
    multilabel indicator matrices one logistic output per label, trained with binary cross-entropy. Labels
    may be of any type (strings...); ``classes_`` lists them sorted.

    Parameters are scikit-learn's (see :mod:`backprop.sklearn` for the differences): ``hidden_layer_sizes``,
    ``activation`` ("identity", "logistic", "tanh", "relu", "gelu", "leaky_relu"), ``solver`` ("sgd",
    "adam"), ``alpha`` (L2 penalty), ``batch_size`` ("auto": min(200, n_samples)), ``learning_rate``
    ("constant", "invscaling", "adaptive"; sgd only), ``learning_rate_init``, ``power_t``, ``max_iter``
    (epochs), ``shuffle``, ``random_state``, ``tol``, ``verbose``, ``warm_start``, ``momentum``,
    ``nesterovs_momentum``, ``early_stopping``, ``validation_fraction``, ``beta_1``, ``beta_2``,
    ``epsilon``, ``n_iter_no_change``; backprop's ``dropout``, ``optimizer``, ``distributed`` and ``jit``
    (see the module's notes).

    Fitted attributes: ``classes_``, ``loss_curve_``, ``best_loss_``, ``validation_scores_``,
    ``best_validation_score_``, ``n_iter_``, ``t_``, ``coefs_``, ``intercepts_``, ``n_features_in_``,
    ``feature_names_in_``, ``n_layers_``, ``n_outputs_``, ``out_activation_``, and backprop's ``model_`` (the
    network, logits out) and ``optimizer_``.
    """

    _score_function = staticmethod(accuracy_score)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    # ------------------------------------------------------------------------------------- targets
    def _validate_input(self, X: Any, y: Any, incremental: bool, reset: bool) -> tuple[Any, np.ndarray]:
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._lb = LabelBinarizer().fit(y)
            self.classes_ = self._lb.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start and not incremental:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in the "
                                     f"previous call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                                 f"'y' has {classes}.")
        return X, y

    def _encode_targets(self, y: np.ndarray) -> np.ndarray:
        Y = self._lb.transform(y)
        if self._lb.y_type_ == "multiclass":
            return Y.argmax(axis=1)
        return Y.astype(np.float64)

    def _n_outputs(self, Y: np.ndarray) -> int:
        self.out_activation_ = "softmax" if self._lb.y_type_ == "multiclass" else "logistic"
        return len(self.classes_) if Y.ndim == 1 else Y.shape[1]

    def _per_sample_loss(self, out: Tensor, target: np.ndarray) -> Tensor:
        """scikit-learn's log loss from logits: softmax cross-entropy, or logistic summed over the labels."""
        return per_sample_loss("log_loss" if target.ndim == 1 else "binary_log_loss")(out, target)

    # ------------------------------------------------------------------------------------------- API
    def fit(self, X, y, sample_weight=None):
        """Fit the network to X and y for up to ``max_iter`` epochs (continuing from the last fit with
        ``warm_start=True``); returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y), keeping the network and the optimizer's state from the previous calls.

        ``classes`` (every label that will ever occur) is required on the first call, unless y is a
        multilabel indicator matrix.
        """
        self._validate_params()
        if not hasattr(self, "classes_"):
            if classes is None and not type_of_target(y).startswith("multilabel"):
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self._lb = LabelBinarizer().fit(y if classes is None else classes)
            self.classes_ = self._lb.classes_
        elif classes is not None and not np.array_equal(self.classes_, unique_labels(classes)):
            raise ValueError(f"`classes={classes!r}` is not the same as on last call to partial_fit, "
                             f"was: {self.classes_!r}")
        return self._fit(X, y, sample_weight, incremental=True)

    def _predict(self, X: Any) -> np.ndarray:
        return self._lb.inverse_transform(self._proba(X))

    def _proba(self, X: Any) -> np.ndarray:
        z = Tensor(self._raw_output(X))
        with no_grad():
            return (F.softmax(z, axis=1) if self.out_activation_ == "softmax" else F.sigmoid(z)).data

    def predict(self, X):
        """The predicted class of each sample (an indicator matrix for multilabel y)."""
        return self._predict(self._validated_X(X))

    def predict_proba(self, X):
        """Class probabilities, columns in the order of ``classes_`` (in the network's dtype)."""
        p = self._proba(self._validated_X(X))
        if self.n_outputs_ == 1:
            p = p.ravel()
            return np.column_stack([1 - p, p])
        return p

    def predict_log_proba(self, X):
        """The logarithm of :meth:`predict_proba`."""
        p = self.predict_proba(X)
        return np.log(p, out=p)


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by backprop (the API of sklearn's ``MLPRegressor``).

    Identity output units trained on half the squared error (``loss="squared_error"``), or exponential ones
    on half the Poisson deviance (``loss="poisson"``, y >= 0). y may be (n,) (then ``predict`` returns (n,))
    or (n, n_outputs). Parameters and fitted attributes: those of :class:`MLPClassifier`, without
    ``classes_``.
    """

    _parameter_constraints: ClassVar[dict] = {
        **_BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson"})],
    }

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001,
                 power_t=0.5, max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 dropout=0.0, optimizer=None, distributed=False, jit=True):
        self.loss = loss
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
                         warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
                         early_stopping=early_stopping, validation_fraction=validation_fraction, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change, dropout=dropout,
                         optimizer=optimizer, distributed=distributed, jit=jit)

    _score_function = staticmethod(r2_score)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.positive_only = self.loss == "poisson"
        return tags

    def _validate_input(self, X: Any, y: Any, incremental: bool, reset: bool) -> tuple[Any, np.ndarray]:
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and (y < 0).any():
            raise ValueError("loss='poisson' requires y >= 0.")
        if not reset and y.ndim == 2 and y.shape[1] != self.n_outputs_ or not reset and y.ndim == 1 \
                and self.n_outputs_ != 1:
            raise ValueError(f"y has {1 if y.ndim == 1 else y.shape[1]} outputs, but {type(self).__name__} "
                             f"was fitted with {self.n_outputs_}.")
        return X, y

    def _encode_targets(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.float64).reshape(len(y), -1)

    def _n_outputs(self, Y: np.ndarray) -> int:
        self.out_activation_ = "exp" if self.loss == "poisson" else "identity"
        return Y.shape[1]

    def _per_sample_loss(self, out: Tensor, target: np.ndarray) -> Tensor:
        """Half the squared error, or half the Poisson deviance with a log link, averaged over the outputs."""
        return per_sample_loss(self.loss)(out, target)

    def fit(self, X, y, sample_weight=None):
        """Fit the network to X and y for up to ``max_iter`` epochs (continuing from the last fit with
        ``warm_start=True``); returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), keeping the network and the optimizer's state from the previous calls."""
        return self._fit(X, y, sample_weight, incremental=True)

    def _predict(self, X: Any) -> np.ndarray:
        out = self._raw_output(X)
        if self.out_activation_ == "exp":
            out = np.exp(out)
        return out.ravel() if self.n_outputs_ == 1 else out

    def predict(self, X):
        """The predicted targets: (n_samples,) when fitted on 1-d y, else (n_samples, n_outputs)."""
        return self._predict(self._validated_X(X))


# ------------------------------------------------------------------------- the step and the epoch rules
class _EstimatorStep(Step):
    """scikit-learn's training step: dropout from the estimator's own generator, the batch's sample weights,
    and the L2 penalty ``alpha / 2 * ||W||^2`` over the WHOLE batch's weight (data-parallel ranks each add it,
    scaled by their share, so it counts once). A non-finite loss still updates, as in scikit-learn, which
    reports non-finite weights once training ends."""

    skip_nonfinite = False

    def __init__(self, estimator: _BaseMLP, weighted: bool = False) -> None:
        super().__init__(estimator.model_, estimator.optimizer_, None, check_finite=False)
        self.estimator = estimator
        self.half_alpha = 0.5 * float(estimator.alpha)
        # NOTE: a captured step replays ops, not Python: the penalty's scale alpha / (2 * total) is a Python
        # number, the same for every batch of one shape only without sample weights
        self.capturable = not (weighted and self.half_alpha)

    def compute_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        est = self.estimator
        x = batch.x
        # NOTE: a dense batch enters as it is (converted to the model's dtype by an op, which a captured
        # step follows); a sparse one is densified here (such a step runs eagerly)
        x = Tensor(x).astype(self.model.dtype) if isinstance(x, np.ndarray) else _rows(x, slice(None), self.model.dtype)
        out = est._forward(x, training=True)
        loss, _ = weighted_loss(est._per_sample_loss(out, batch.y), batch.w)
        if self.half_alpha:
            loss = loss + est._penalty() * (self.half_alpha / batch.total)
        return out, loss

    def epoch_weight(self, batch: Batch) -> float:
        return float(batch.n)  # loss_curve_: the batches' losses weighted by their sizes, as scikit-learn


class _EpochRules(Callback):
    """scikit-learn's end of an epoch: ``loss_curve_``, validation scores, the adaptive and invscaling
    learning rates, stopping after ``n_iter_no_change`` epochs without improvement, and the
    ConvergenceWarning when ``max_iter`` runs out."""

    def __init__(self, estimator: _BaseMLP, n_samples: int, validation: list[Any] | None, incremental: bool) -> None:
        self.est, self.n_samples, self.validation, self.incremental = estimator, n_samples, validation, incremental

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        est = self.est
        est.model_.eval()
        est.n_iter_ += 1
        est.t_ += self.n_samples
        est.loss_curve_.append(float((logs or {})["loss"]))
        if est.verbose and est._speaks:
            print(f"Iteration {est.n_iter_}, loss = {est.loss_curve_[-1]:.8f}")
        if self.validation is not None:
            est._update_validation(*self.validation)
        else:
            est._update_loss()
        if est.optimizer is None and est.solver == "sgd" and est.learning_rate == "invscaling":
            est._set_lr(float(est.learning_rate_init) / (est.t_ + 1) ** est.power_t)
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if self.validation is not None else "Training loss"
            msg = (f"{what} did not improve more than tol={est.tol:f} for {est.n_iter_no_change} "
                   "consecutive epochs.")
            if est._trigger_stopping(msg):
                self.model.stop_training = True
                return
            est._no_improvement_count = 0
        if not self.incremental and est.n_iter_ == est.max_iter and est._speaks:
            # NOTE: stacklevel 8 points at the user's fit(): here <- CallbackList <- Loop (2) <- _fit_stochastic
            # <- _fit <- fit
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({est.max_iter}) reached and the "
                          "optimization hasn't converged yet.", ConvergenceWarning, stacklevel=8)
