# Trains the example models and saves each as an rscore bundle (run by `make setup`).
#
#   Rscript examples/build_examples.R OUT_DIR
#
# Each bundle is what an R user would hand over: saveRDS(fit, "model.rds") plus an
# optional rscore.toml. None calls library(): rscore finds the package that scores it.

args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[[1]] else "examples/build"
set.seed(20261126)

bundle <- function(name, fit, toml = NULL) {
  dir <- file.path(out, name)
  dir.create(dir, recursive = TRUE, showWarnings = FALSE)
  saveRDS(fit, file.path(dir, "model.rds"))
  if (!is.null(toml)) writeLines(toml, file.path(dir, "rscore.toml"))
  message("built ", dir)
}

# A linear model on mtcars: numeric inputs, one number per row.
bundle("mtcars-lm", lm(mpg ~ wt + hp + qsec, data = mtcars), c(
  'name = "mtcars-lm"',
  'version = "1.0.0"'
))

# A random forest classifier on iris: numeric inputs, a class label (factor) per row.
bundle("iris-rf", randomForest::randomForest(Species ~ ., data = iris, ntree = 200), c(
  'name = "iris-rf"',
  'version = "1.0.0"'
))

# A Poisson GLM with factor inputs; predict() arguments come from rscore.toml.
bundle("warpbreaks-glm", glm(breaks ~ wool + tension, family = poisson, data = warpbreaks), c(
  'name = "warpbreaks-glm"',
  'version = "1.0.0"',
  '',
  '[predict]',
  'type = "response"'
))
