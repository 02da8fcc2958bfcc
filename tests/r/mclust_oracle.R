# The mclust oracle of tests/test_mclust_oracle.py (R's mclust is GPL: it runs here, in its own
# process, as a test oracle; none of its code is in gmm-pipeline).
#
#   Rscript tests/r/mclust_oracle.R OUT.json NAME=SOURCE ...
#
# SOURCE is `faithful`, `iris` or `diabetes` (data R and mclust ship) or a CSV path (no header).
# For every data set, G = 2..4 and each of the 14 models, from the partition of mclust's
# model-based hierarchical clustering (hc, VVV, use = "VARS"): the parameters of mclust's first M step
# (mstep) from that partition, and what me() converges to from there (log-likelihood, iterations,
# return code), plus mclust's BIC and ICL of that same fit (Mclust with the same hcPairs) with its
# final parameters, and
# nVarParams/nMclustParams for d in {1, 2, 5}, G in {1, 3}.
suppressMessages({library(mclust); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
out <- args[1]
models <- c("EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE", "VEE", "EVE", "VVE", "EEV", "VEV", "EVV", "VVV")
control <- emControl(tol = c(1e-10, sqrt(.Machine$double.eps)))
load_data <- function(src) {
  if (src == "faithful") return(as.matrix(datasets::faithful))
  if (src == "iris") return(as.matrix(datasets::iris[, 1:4]))
  if (src == "diabetes") { data(diabetes, package = "mclust"); return(as.matrix(diabetes[, -1])) }
  as.matrix(read.csv(src, header = FALSE))
}
num <- function(x) if (is.null(x) || length(x) == 0) NA else as.numeric(x)
result <- list(mclust = as.character(packageVersion("mclust")), R = R.version.string, data = list())
for (spec in args[-1]) {
  parts <- strsplit(spec, "=", fixed = TRUE)[[1]]
  X <- load_data(parts[2]); dimnames(X) <- NULL
  hcp <- hc(X, modelName = "VVV", use = "VARS")
  cls <- hclass(hcp, 2:4)
  cells <- list()
  for (G in 2:4) for (m in models) {
    z0 <- unmap(cls[, as.character(G)])
    ms <- mstep(data = X, modelName = m, z = z0)
    fit <- me(data = X, modelName = m, z = z0, control = control)
    mc <- tryCatch(Mclust(X, G = G, modelNames = m, initialization = list(hcPairs = hcp), control = control,
                          verbose = FALSE), error = function(e) NULL)
    sigma <- ms$parameters$variance$sigma
    cells[[length(cells) + 1]] <- list(
      G = G, model = m,
      pro = num(ms$parameters$pro), mean = num(ms$parameters$mean),  # mean: d x G, column-major
      sigma = if (is.null(sigma)) NA else num(sigma),                 # d x d x G, column-major
      loglik = num(fit$loglik), return_code = num(attr(fit, "returnCode")),
      iterations = num(attr(fit, "info")[1]),
      bic = if (is.null(mc)) NA else num(mc$bic), icl = if (is.null(mc)) NA else num(icl(mc)),
      mc_loglik = if (is.null(mc)) NA else num(mc$loglik),
      final_pro = if (is.null(mc)) NA else num(mc$parameters$pro),   # the parameters bic/icl are of
      final_mean = if (is.null(mc)) NA else num(mc$parameters$mean),
      final_sigma = if (is.null(mc)) NA else num(mc$parameters$variance$sigma))
  }
  bt <- mclustBIC(X, G = 2:4, modelNames = models, initialization = list(hcPairs = hcp), control = control,
                  verbose = FALSE)
  bic_table <- lapply(2:4, function(G) lapply(models, function(m) num(bt[as.character(G), m])))
  result$data[[parts[1]]] <- list(X = num(t(X)), n = nrow(X), d = ncol(X), cells = cells,
                                  bic_table = bic_table)  # mclustBIC: rows G = 2..4, columns models
}
counts <- list()
for (d in c(1, 2, 5)) for (G in c(1, 3)) for (m in models)
  counts[[length(counts) + 1]] <- list(d = d, G = G, model = m, nVarParams = nVarParams(m, d, G),
                                       nMclustParams = nMclustParams(m, d, G))
result$counts <- counts
write_json(result, out, digits = NA, auto_unbox = TRUE, na = "null")
