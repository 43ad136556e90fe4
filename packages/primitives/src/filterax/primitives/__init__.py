"""filterax.primitives — Layer-0 pure functions, protocols and operators for ensemble DA."""

from ._version import __version__ as __version__
from ._protocols import (
    AbstractDynamics as AbstractDynamics,
    AbstractLocalFilter as AbstractLocalFilter,
    AbstractObsOperator as AbstractObsOperator,
    AbstractProcess as AbstractProcess,
    AbstractScheduler as AbstractScheduler,
    AbstractSequentialFilter as AbstractSequentialFilter,
    Analysis as Analysis,
)

# --- the cycled-method contract: model protocol, init/step kernels, post-processing ---
from ._model import (
    AbstractModel as AbstractModel,
    AbstractStochasticDynamics as AbstractStochasticDynamics,
    Model as Model,
    forecast_ensemble as forecast_ensemble,
    observe_ensemble as observe_ensemble,
    propagate as propagate,
)
from ._geometry import GEOMETRY_KEYS as GEOMETRY_KEYS, geometry_context as geometry_context
from ._cycled import (
    AbstractCycledMethod as AbstractCycledMethod,
    AbstractPostProcessor as AbstractPostProcessor,
    AbstractPresampledMethod as AbstractPresampledMethod,
    CycleInfo as CycleInfo,
    CycleObservation as CycleObservation,
    NoPostProcessing as NoPostProcessing,
    RandomRotation as RandomRotation,
    is_finite as is_finite,
)

# --- statistics, operators, noise, gain, likelihood, KL, perturbations ---
from ._statistics import (
    cross_covariance as cross_covariance,
    ensemble_anomalies as ensemble_anomalies,
    ensemble_covariance as ensemble_covariance,
    ensemble_mean as ensemble_mean,
)
from ._lowrank import (
    LowRankUpdate as LowRankUpdate,
    Woodbury as Woodbury,
    WoodburySolver as WoodburySolver,
)
from ._whitening import (
    AbstractNoiseRoot as AbstractNoiseRoot,
    CholeskyRoot as CholeskyRoot,
    DiagonalRoot as DiagonalRoot,
    Whitening as Whitening,
    noise_whitening as noise_whitening,
    whitened_noise_sample as whitened_noise_sample,
    whitened_noise_solve as whitened_noise_solve,
)
from ._noise import (
    NoiseLike as NoiseLike,
    as_noise_operator as as_noise_operator,
    dense_noise as dense_noise,
    diagonal_noise as diagonal_noise,
    isotropic_noise as isotropic_noise,
    low_rank_noise as low_rank_noise,
    noise_sqrt as noise_sqrt,
    noise_structure as noise_structure,
)
from ._missing import (
    fill_missing as fill_missing,
    mask_anomalies as mask_anomalies,
    mask_noise as mask_noise,
    observation_mask as observation_mask,
)
from ._gain import innovation_covariance as innovation_covariance, kalman_gain as kalman_gain
from ._likelihood import (
    InnovationStatistics as InnovationStatistics,
    innovation_statistics as innovation_statistics,
    log_likelihood as log_likelihood,
)
from ._kl import ensemble_gaussian_kl as ensemble_gaussian_kl, gaussian_kl as gaussian_kl
from ._obs_likelihood import GaussianObsLikelihood as GaussianObsLikelihood
from ._vi_cost import ensemble_vi_cost as ensemble_vi_cost, gaussian_vi_cost as gaussian_vi_cost
from ._perturbations import perturbed_observations as perturbed_observations

# --- localisation, inflation, shrinkage, patches ---
from ._distances import (
    PeriodicDistance as PeriodicDistance,
    euclidean as euclidean,
    haversine as haversine,
    pairwise_distances as pairwise_distances,
    periodic as periodic,
)
from ._tapers import (
    DAPPER_GC_FACTOR as DAPPER_GC_FACTOR,
    dapper_radius_to_gc_halfwidth as dapper_radius_to_gc_halfwidth,
    gaspari_cohn as gaspari_cohn,
    gaussian_taper as gaussian_taper,
    hard_cutoff as hard_cutoff,
    soar_taper as soar_taper,
)
from ._localization import (
    AbstractLocalizer as AbstractLocalizer,
    GaspariCohnLocalizer as GaspariCohnLocalizer,
    GaussianLocalizer as GaussianLocalizer,
    HardCutoffLocalizer as HardCutoffLocalizer,
    SOARLocalizer as SOARLocalizer,
    adaptive_localization as adaptive_localization,
    localization_matrix as localization_matrix,
    localize as localize,
)
from ._inflation import (
    RTPP as RTPP,
    RTPS as RTPS,
    AbstractInflator as AbstractInflator,
    AdaptiveInflator as AdaptiveInflator,
    AdditiveInflator as AdditiveInflator,
    MultiplicativeInflator as MultiplicativeInflator,
    inflate_adaptive as inflate_adaptive,
    inflate_additive as inflate_additive,
    inflate_multiplicative as inflate_multiplicative,
    inflate_rtpp as inflate_rtpp,
    inflate_rtps as inflate_rtps,
)
from ._validation import concrete_value as concrete_value

# --- trace-time input checks (ensembles, vectors; inverse problems: noise, obs, evaluations) ---
from ._validation import (
    as_float_parameter as as_float_parameter,
    check_ensemble as check_ensemble,
    assume_checked as assume_checked,
    check_parameter as check_parameter,
    check_vector as check_vector,
    parameter_converter as parameter_converter,
)
from ._covariance_checks import (
    check_forward_evals as check_forward_evals,
    check_observation_vector as check_observation_vector,
    check_prng_key as check_prng_key,
    floating_dtype as floating_dtype,
    noise_dimension as noise_dimension,
    positive_definite_noise as positive_definite_noise,
    valid_noise as valid_noise,
)
from ._rotation import (
    mean_preserving_rotation as mean_preserving_rotation,
    random_rotation as random_rotation,
    rotate_ensemble as rotate_ensemble,
    rotate_with as rotate_with,
)
from ._shrinkage import ledoit_wolf_shrinkage as ledoit_wolf_shrinkage
from ._linalg import matmul as matmul
from ._spectral import (
    SpectralKind as SpectralKind,
    default_pinv_rcond as default_pinv_rcond,
    inverse_sqrt_one_plus as inverse_sqrt_one_plus,
    pinv_psd as pinv_psd,
    sqrt_psd as sqrt_psd,
    symmetric_matrix_function as symmetric_matrix_function,
)
from ._patches import (
    Patches as Patches,
    assign_obs_to_patches as assign_obs_to_patches,
    blend_patches as blend_patches,
    blending_weights as blending_weights,
    create_patches as create_patches,
)

# --- diagnostics and observation operators ---
from ._innovation_diagnostics import (
    desroziers_analysis_error as desroziers_analysis_error,
    desroziers_background_error as desroziers_background_error,
    desroziers_obs_error as desroziers_obs_error,
    dfs as dfs,
    innovation_chi2 as innovation_chi2,
)
from ._obs_operators import (
    IdentityObs as IdentityObs,
    IndexObs as IndexObs,
    LinearObs as LinearObs,
    apply_obs as apply_obs,
    every_nth as every_nth,
)
from ._scores import (
    crps_ensemble as crps_ensemble,
    effective_sample_size as effective_sample_size,
    rank_histogram as rank_histogram,
    rank_histogram_chi2 as rank_histogram_chi2,
    rms_spread as rms_spread,
    rmse as rmse,
    spread_skill_ratio as spread_skill_ratio,
    weighted_crps as weighted_crps,
)
