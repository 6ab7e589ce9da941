"""scikit-learn estimators: ``MLPClassifier`` and ``MLPRegressor`` trained by backprop.

Drop-in counterparts of :class:`sklearn.neural_network.MLPClassifier` / ``MLPRegressor`` (same parameters,
fitted attributes and stopping rule) whose network is a :class:`backprop.nn.Sequential` (``model_``) trained
with backprop's optimizers (``optimizer_``), or with scipy's L-BFGS (``solver="lbfgs"``) on the loss and
gradient backprop computes. They work in pipelines, grid searches, ``cross_val_score``, ``clone`` and
``pickle`` like any scikit-learn estimator.

scikit-learn's own ``test_mlp.py``, run against these estimators with only the import changed
(``python tests/peers/sklearn_test_mlp.py``), fails only where it reads private attributes or sets fitted
ones on an unfitted estimator, or meets a difference listed below; ``tests/test_sklearn.py`` keeps that
list of failures and their reasons.

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
* ``solver="lbfgs"`` is scikit-learn's: ``scipy.optimize.minimize(method="L-BFGS-B")`` on the whole data
  set with ``maxfun=max_fun``, ``maxiter=max_iter`` and ``gtol=tol``, on the same loss and penalty and the
  same flat parameter vector, so that from the same weights it takes the same steps, to rounding; its
  ``n_iter_``, ``loss_`` and ConvergenceWarning are scikit-learn's. The loss and its gradient come from
  backprop's forward and backward passes (the stochastic solvers' own loss), in the network's dtype: float32
  for float32 ``X``, where scikit-learn's weights turn float64. Beyond scikit-learn, ``loss_curve_`` gets the
  loss after each L-BFGS iteration (and ``verbose`` prints it); ``best_loss_``, ``validation_scores_`` and
  ``best_validation_score_`` are None (scikit-learn leaves the four unset with lbfgs), and ``early_stopping``
  is ignored, as there. It has no ``partial_fit`` (as in scikit-learn), runs eagerly (``jit`` is unused),
  densifies a sparse ``X`` once, and refuses ``dropout``, ``optimizer`` and ``distributed`` (a ValueError).
* ``activation`` also takes backprop's ``"gelu"`` and ``"leaky_relu"``; ``dropout`` adds dropout after every
  hidden layer;
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
  backprop's global generator, so ``bp.manual_seed`` makes such runs reproducible too. The initial weights
  are therefore not scikit-learn's for the same ``random_state`` (their distribution is).
* the early-stopping validation split is stratified for single-label classification (binary and
  multiclass) when every class has two samples or more and the validation set can hold one of each, and
  random otherwise; scikit-learn stratifies binary targets only, and raises a ValueError where it cannot
  (a class of one sample).
* with several regression outputs the loss is averaged over them, and so is its gradient. scikit-learn's
  gradient is that of the sum over the outputs (it reports the squared error averaged, the Poisson loss
  summed), so its data term weighs ``n_outputs`` times more against the L2 penalty and ``tol``; with one
  output the two are the same.
* ``coefs_`` and ``intercepts_`` are views of ``model_``'s weights: assigning them copies into the fitted
  network, and raises NotFittedError before ``fit`` (scikit-learn's own tests set them, with other fitted
  attributes, on an unfitted estimator). The optimizer is ``optimizer_``, not scikit-learn's private
  ``_optimizer``.
* ``partial_fit`` also accepts a multilabel indicator ``y`` without ``classes`` on the first call (scikit-learn
  requires ``classes``, which for such ``y`` are its column indices).

The L2 penalty is scikit-learn's: ``alpha / 2 * sum ||W||^2`` over the weight matrices (not the biases),
divided by the batch's number of samples (its sum of sample weights), added to the mean loss of the batch,
so its gradient is ``alpha * W / n_batch``; ``loss_curve_`` includes it. Losses: cross-entropy on softmax
outputs (multiclass), binary cross-entropy on logistic outputs summed over the outputs (binary: one output
unit; multilabel), half the squared error averaged over the outputs (regression; scikit-learn reports that
loss but follows the gradient of the sum) or half the Poisson deviance with a log link (``loss="poisson"``).

Types: ``X`` is float64 unless it is float32 (then the network, ``predict_proba`` and ``coefs_`` are
float32); sparse ``X`` (CSR/CSC) is densified one batch at a time (all at once with lbfgs). BLAS threads
are left to the caller: joblib already limits them to one per worker in ``GridSearchCV(n_jobs=...)``; use
``threadpoolctl.threadpool_limits`` to choose otherwise.
"""

from __future__ import annotations

import math
import warnings
from itertools import pairwise
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import scipy.optimize
import scipy.sparse as sp

from backprop.extras import require

require("sklearn", needed_by="backprop.sklearn")  # NOTE: without the extra: one line naming it, not a bare ImportError

from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.metaestimators import available_if
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
#: scipy < 1.15 takes L-BFGS-B's ``iprint`` option (deprecated since, and unused by scikit-learn there).
_SCIPY_TAKES_IPRINT = tuple(int(part) for part in scipy.__version__.split(".")[:2]) < (1, 15)


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


def _stochastic_solver(est: Any) -> bool:
    """Whether ``partial_fit`` exists (scikit-learn's rule, for ``available_if``): L-BFGS has no incremental form."""
    if est.solver == "lbfgs":
        raise AttributeError(f"partial_fit is only available for stochastic optimizers. {est.solver} is not "
                             "stochastic.")
    return True


class _BaseMLP(BaseEstimator):
    """Shared parameters, network, training loop and stopping rule of the two estimators."""

    _parameter_constraints: ClassVar[dict] = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
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
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "optimizer": [callable, None],
        "distributed": ["boolean"],
        "jit": ["boolean"],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, dropout=0.0, optimizer=None,
                 distributed=False, jit=True):
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
        self.max_fun = max_fun
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
        # NOTE: the check comes before self._linears(), which would raise AttributeError (no model_ yet)
        check_is_fitted(self)
        self._assign([lin.weight.data for lin in self._linears()], [np.asarray(c).T for c in coefs], "coefs_")

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """The bias vectors (the network's own arrays)."""
        check_is_fitted(self)
        return [lin.bias.data for lin in self._linears()]

    @intercepts_.setter
    def intercepts_(self, intercepts: list[Any]) -> None:
        check_is_fitted(self)
        self._assign([lin.bias.data for lin in self._linears()], [np.asarray(b) for b in intercepts], "intercepts_")

    def _assign(self, targets: list[np.ndarray], values: list[np.ndarray], name: str) -> None:
        """Copy arrays into the network's weights in place (the optimizer keeps referring to them)."""
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

    def _uses_lbfgs(self) -> bool:
        """solver="lbfgs", checked against the options that need a stochastic solver."""
        if self.solver != "lbfgs":
            return False
        for name, off, why in (("optimizer", None, "replaces the stochastic solvers"),
                               ("dropout", 0.0, "makes the loss random"),
                               ("distributed", False, "splits mini-batches over processes")):
            value = getattr(self, name)
            if value is not off and value != off:
                raise ValueError(f"solver='lbfgs' cannot be combined with {name}={value!r}: {name} {why}; use "
                                 f"solver='sgd' or 'adam', or {name}={off!r}.")
        return True

    def _fit(self, X: Any, y: Any, sample_weight: Any, incremental: bool) -> _BaseMLP:
        self._validate_params()
        self._hidden_sizes()
        lbfgs = self._uses_lbfgs()
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
        if lbfgs:
            self._fit_lbfgs(X, Y, sw)
        else:
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

    # -------------------------------------------------------------------------------------- L-BFGS
    def _packed(self, arrays: list[np.ndarray] | None = None) -> np.ndarray:
        """scikit-learn's flat parameter vector (float64): every ``coefs_`` matrix (n_in, n_out) row by row,
        then every intercept; ``arrays``: the gradients of the network's parameters instead of the values."""
        lins = self._linears()
        if arrays is None:
            arrays = [a for lin in lins for a in (lin.weight.data, lin.bias.data)]
        weights, biases = arrays[0::2], arrays[1::2]
        return np.concatenate([w.T.ravel() for w in weights] + [b.ravel() for b in biases]).astype(np.float64)

    def _unpack(self, packed: np.ndarray) -> None:
        """Copy scikit-learn's flat vector into the network's weights (in place, in the network's dtype)."""
        lins = self._linears()
        start = 0
        for w in [lin.weight.data for lin in lins] + [lin.bias.data for lin in lins]:
            end = start + w.size
            # NOTE: a weight is (n_out, n_in) here and (n_in, n_out) in coefs_ and in the vector
            w[...] = packed[start:end].reshape(w.shape[::-1]).T if w.ndim == 2 else packed[start:end]
            start = end
        if start != len(packed):
            raise ValueError(f"the parameter vector has {len(packed)} values, the network {start}.")

    def _loss_grad_lbfgs(self, packed: np.ndarray, X: np.ndarray, Y: np.ndarray, sample_weight: np.ndarray | None,
                         *_buffers: Any) -> tuple[float, np.ndarray]:
        """The loss at the flat vector ``packed`` and its gradient (flat): L-BFGS's objective.

        The loss is the stochastic solvers' own (:class:`_EstimatorStep`: the mean loss plus the L2 penalty
        ``alpha / 2 * sum ||W||^2 / n``) over the whole of X, differentiated by backprop's backward pass, in
        the network's dtype. The signature is scikit-learn's (``_buffers``, its scratch arrays, are ignored;
        its gradient test calls this method), so Y may also be its label-indicator matrix.
        """
        self._unpack(packed)
        if sample_weight is None:
            sample_weight = np.ones(X.shape[0])
        if self.out_activation_ == "softmax" and Y.ndim == 2:  # one-hot (scikit-learn's form): class indices
            Y = Y.argmax(axis=1)
        elif Y.ndim == 2 and Y.dtype != np.float64:
            Y = Y.astype(np.float64)
        batch = Batch(X, Y, sample_weight, np.arange(X.shape[0]), X.shape[0], float(sample_weight.sum()))
        step = _EstimatorStep(self, weighted=True)
        self.model_.zero_grad()
        _, loss = step.compute_loss(batch)
        step.backpropagate(loss)
        params = [a for lin in self._linears() for a in (lin.weight, lin.bias)]
        return float(loss.data), self._packed([p.grad for p in params])

    def _fit_lbfgs(self, X: Any, Y: np.ndarray, sw: np.ndarray) -> None:
        """scikit-learn's L-BFGS fit: ``scipy.optimize.minimize(method="L-BFGS-B")`` on the whole data set,
        from the network's current weights, with its options and its ConvergenceWarning."""
        # NOTE: one full batch: a sparse X is densified once; there is no mini-batch, no optimizer_, no
        # early stopping (ignored, as scikit-learn does), and the loss is not a stopping rule (best_loss_ None)
        X = _rows(X, slice(None), self.model_.dtype)
        self.optimizer_ = None
        self.validation_scores_ = self.best_validation_score_ = self.best_loss_ = None
        last: dict[str, Any] = {}

        def objective(packed: np.ndarray) -> tuple[float, np.ndarray]:
            loss, grad = self._loss_grad_lbfgs(packed, X, Y, sw)
            last["x"], last["loss"] = packed.copy(), loss
            return loss, grad

        def iteration_ends(xk: np.ndarray) -> None:
            # NOTE: the old callback(xk) form, which every scipy takes; the iterate is almost always the
            # point evaluated last (the line search's accepted one)
            loss = last["loss"] if np.array_equal(xk, last.get("x")) else self._loss_grad_lbfgs(xk, X, Y, sw)[0]
            self.loss_curve_.append(float(loss))
            if self.verbose:
                print(f"Iteration {len(self.loss_curve_)}, loss = {loss:.8f}")

        options: dict[str, Any] = {"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol}
        if _SCIPY_TAKES_IPRINT:  # NOTE: deprecated from scipy 1.15 on, as scikit-learn passes it
            options["iprint"] = 1 if self.verbose is True or self.verbose >= 1 else -1
        result = scipy.optimize.minimize(objective, self._packed(), method="L-BFGS-B", jac=True, options=options,
                                         callback=iteration_ends)
        self.n_iter_ = min(result.nit, self.max_iter)
        if result.status != 0:
            # NOTE: scikit-learn's words (sklearn.utils.optimize._check_optimize_result)
            msg = (f"lbfgs failed to converge after {self.n_iter_} iteration(s) (status={result.status}):\n"
                   f"{result.message}\n")
            if self.n_iter_ == self.max_iter:
                msg += f"\nIncrease the number of iterations to improve the convergence (max_iter={self.max_iter})."
            msg += ("\nYou might also want to scale the data as shown in:\n"
                    "    https://scikit-learn.org/stable/modules/preprocessing.html")
            # NOTE: stacklevel 4 points at the user's fit(): here <- _fit <- fit
            warnings.warn(msg, ConvergenceWarning, stacklevel=4)
        self.loss_ = float(result.fun)
        self._unpack(result.x)
        self.model_.zero_grad()  # NOTE: the last evaluation's gradients are not the fitted weights' anyway

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
    ``activation`` ("identity", "logistic", "tanh", "relu", "gelu", "leaky_relu"), ``solver`` ("lbfgs",
    "sgd", "adam"), ``alpha`` (L2 penalty), ``batch_size`` ("auto": min(200, n_samples)), ``learning_rate``
    ("constant", "invscaling", "adaptive"; sgd only), ``learning_rate_init``, ``power_t``, ``max_iter``
    (epochs; L-BFGS iterations with lbfgs), ``shuffle``, ``random_state``, ``tol``, ``verbose``,
    ``warm_start``, ``momentum``, ``nesterovs_momentum``, ``early_stopping``, ``validation_fraction``,
    ``beta_1``, ``beta_2``, ``epsilon``, ``n_iter_no_change``, ``max_fun`` (lbfgs: the most loss
    evaluations); backprop's ``dropout``, ``optimizer``, ``distributed`` and ``jit`` (see the module's notes).

    Fitted attributes: ``classes_``, ``loss_``, ``loss_curve_``, ``best_loss_``, ``validation_scores_``,
    ``best_validation_score_``, ``n_iter_``, ``t_``, ``coefs_``, ``intercepts_``, ``n_features_in_``,
    ``feature_names_in_``, ``n_layers_``, ``n_outputs_``, ``out_activation_``, and backprop's ``model_`` (the
    network, logits out) and ``optimizer_`` (None with lbfgs).
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

    @available_if(_stochastic_solver)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y), keeping the network and the optimizer's state from the previous calls.

        ``classes`` (every label that will ever occur) is required on the first call, unless y is a
        multilabel indicator matrix; for one, ``classes`` (scikit-learn requires it) must be its column
        indices ``[0, ..., n_labels - 1]``. Not available with ``solver="lbfgs"``.
        """
        self._validate_params()
        if not hasattr(self, "classes_"):
            multilabel = type_of_target(y).startswith("multilabel")
            if classes is None and not multilabel:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            # NOTE: as scikit-learn, the binarizer learns a multilabel y itself (fitted on `classes`, a
            # plain list of labels, it could not transform an indicator matrix)
            lb = LabelBinarizer().fit(y if multilabel else classes)
            if multilabel and classes is not None and not np.array_equal(unique_labels(classes), lb.classes_):
                raise ValueError(f"classes={classes!r} does not match the multilabel y of {len(lb.classes_)} "
                                 f"columns: its classes are the column indices {lb.classes_.tolist()}.")
            self._lb, self.classes_ = lb, lb.classes_
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
                 max_fun=15000, dropout=0.0, optimizer=None, distributed=False, jit=True):
        self.loss = loss
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
                         warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
                         early_stopping=early_stopping, validation_fraction=validation_fraction, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
                         dropout=dropout, optimizer=optimizer, distributed=distributed, jit=jit)

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

    @available_if(_stochastic_solver)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), keeping the network and the optimizer's state from the previous calls (not
        available with ``solver="lbfgs"``)."""
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
        est.loss_ = est.loss_curve_[-1]
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
