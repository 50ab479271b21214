"""The README quickstart: sample a 2-D Gaussian mixture with several solvers, and its exact likelihood."""
import torch
import sdesolve as sds

# data: a 2-D Gaussian mixture, whose score is known exactly at every time
gm = sds.GaussianMixture([0.2, 0.5, 0.3], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], [0.1, 0.3, 0.2])
process = sds.VPSDE()
score = gm.score(process)            # or sds.Score.from_eps(my_model, process)

# swap integrators by passing another solver object
for solver, steps in [(sds.EulerMaruyama(), 1000), (sds.DPMSolverPP(order=2), 10),
                      (sds.EDMHeun(), 10), (sds.Dopri5(1e-4, 1e-4), None)]:
    sol = sds.sample(process, score, solver, shape=(4096, 2), steps=steps, seed=0)
    print(type(solver).__name__, sol.stats.nfe, sds.metrics.sliced_wasserstein(sol.y, gm.sample(4096)))

# exact likelihood through the probability-flow ODE
x = gm.sample(8)
res = sds.log_likelihood(process, score, x, trace=sds.ExactTrace())
print(res.logp, gm.log_prob(x))      # nats; equal up to the prior mismatch at T
