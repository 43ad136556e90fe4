"""filterax.learn — see the package README for what lands here."""

from ._version import __version__ as __version__

# --- loss zoo and sequential VI (issue 12: §1 loss zoo, §3 recursive ELBO) ---
from ._energy_score import energy_score as energy_score
from ._losses import (
    crps_loss as crps_loss,
    energy_score_loss as energy_score_loss,
    innovation_nll as innovation_nll,
    observation_mse as observation_mse,
    spread_skill_loss as spread_skill_loss,
)
from ._sequential_vi import (
    GaussianELBOFit as GaussianELBOFit,
    fit_gaussian_elbo as fit_gaussian_elbo,
    gaussian_elbo as gaussian_elbo,
    recursive_elbo as recursive_elbo,
)

# --- training loops and positive reparameterisations (issue 12 §1, training patterns) ---
from ._hybrid import (
    ResidualDynamics as ResidualDynamics,
    ResidualObsOperator as ResidualObsOperator,
    StencilMLP as StencilMLP,
)
from ._positive import (
    AbstractPositiveTransform as AbstractPositiveTransform,
    ExpPositive as ExpPositive,
    SoftplusPositive as SoftplusPositive,
)
from ._training import (
    FitResult as FitResult,
    Resumed as Resumed,
    TrainingProgress as TrainingProgress,
    WindowFitResult as WindowFitResult,
    fit as fit,
    fit_windows as fit_windows,
)
# --- end training ---

# --- learning filters by variational inference: the Gaussian family (issue 12 §2) ---
from ._constant_gain import ConstantGainFilter as ConstantGainFilter
from ._dare import SteadyStateGain as SteadyStateGain, steady_state_gain as steady_state_gain
from ._expected_loglik import expected_log_likelihood as expected_log_likelihood
from ._fit_gain import (
    OfflineGainFit as OfflineGainFit,
    OnlineGainFit as OnlineGainFit,
    fit_gain_offline as fit_gain_offline,
    fit_gain_online as fit_gain_online,
    online_vi_step as online_vi_step,
)
from ._vi_loss import gaussian_vi_terms as gaussian_vi_terms, offline_vi_loss as offline_vi_loss

# --- EnKF and transport-map variational filters (issue 12 §2) ---
from ._enkf_vi import (
    VariationalEnKF as VariationalEnKF,
    VariationalEnKFState as VariationalEnKFState,
    VICycleTerms as VICycleTerms,
    enkf_localization as enkf_localization,
)
from ._enkf_vi_cost import (
    EnKFVICost as EnKFVICost,
    enkf_vi_cost as enkf_vi_cost,
    vi_cost_surface as vi_cost_surface,
)
from ._transport_map import (
    AffineTransportMap as AffineTransportMap,
    transport_map_loss as transport_map_loss,
)

# --- amortised analysis maps (issue 12 §2 neural analysis map, §3 amortised filter) ---
from ._amortised import (
    AmortisedAnalysis as AmortisedAnalysis,
    EquivariantEnsembleNet as EquivariantEnsembleNet,
)
from ._amortised_training import fit_amortised as fit_amortised
# --- end amortised ---

# --- resamplers and particle filters (issue 13 §1: bootstrap family) ---
from ._resampling import (
    effective_sample_size as effective_sample_size,
    multinomial_resample as multinomial_resample,
    normalise_log_weights as normalise_log_weights,
    residual_resample as residual_resample,
    soft_resample as soft_resample,
    stop_gradient_resample as stop_gradient_resample,
    stratified_resample as stratified_resample,
    systematic_resample as systematic_resample,
)
from ._particle_filters import (
    AuxiliaryPF as AuxiliaryPF,
    BootstrapPF as BootstrapPF,
    EnKFProposalPF as EnKFProposalPF,
    OptimalProposalPF as OptimalProposalPF,
    ParticleDiagnostics as ParticleDiagnostics,
    ParticleState as ParticleState,
)
# --- end resamplers and particle filters ---

# --- SMC samplers and variational SMC (issue 13 §1) ---
from ._smc import (
    SMCResult as SMCResult,
    adaptive_tempered_smc as adaptive_tempered_smc,
    tempered_smc as tempered_smc,
)
from ._vsmc import (
    GainCorrection as GainCorrection,
    GaussianProposal as GaussianProposal,
    InnovationMLP as InnovationMLP,
    VSMCFit as VSMCFit,
    bootstrap_proposal as bootstrap_proposal,
    fit_vsmc as fit_vsmc,
    vsmc_bound as vsmc_bound,
)

# --- end SMC ---
# --- optimal-transport resampling, ETPF and LNETF (issue 13 §1) ---
from ._optimal_transport import (
    ot_resample as ot_resample,
    sinkhorn_coupling as sinkhorn_coupling,
    squared_distance_cost as squared_distance_cost,
)
from ._etpf import (
    ETPF as ETPF,
    ETPFInfo as ETPFInfo,
    member_log_likelihoods as member_log_likelihoods,
)
from ._netf import (
    LNETF as LNETF,
    NETF as NETF,
    NETFInfo as NETFInfo,
    netf_transform as netf_transform,
)

# --- end optimal-transport filters ---
# --- conditional normalising flows and the flow filter (issue 13 §2) ---
from ._enkf_normaliser import EnKFNormaliser as EnKFNormaliser, enkf_normaliser as enkf_normaliser
from ._fit_flow import (
    FlowFit as FlowFit,
    fit_conditional_flow as fit_conditional_flow,
    flow_nll as flow_nll,
    trainable_spec as trainable_spec,
)
from ._flow_filter import (
    ConditionalFlowFilter as ConditionalFlowFilter,
    FlowFilterDiagnostics as FlowFilterDiagnostics,
    FlowFilterState as FlowFilterState,
)
from ._flows import (
    AbstractConditionalBijection as AbstractConditionalBijection,
    AffineCoupling as AffineCoupling,
    ConditionalFlow as ConditionalFlow,
    RationalQuadraticSplineCoupling as RationalQuadraticSplineCoupling,
    conditional_flow as conditional_flow,
)
# --- end conditional flows ---

# --- local conditional-flow filter (issue 13 §2 local flows) ---
from ._local_flow_filter import (
    LocalConditionalFlowFilter as LocalConditionalFlowFilter,
    LocalFlowFilterDiagnostics as LocalFlowFilterDiagnostics,
    LocalFlowFilterState as LocalFlowFilterState,
)
# --- end local conditional-flow filter ---
