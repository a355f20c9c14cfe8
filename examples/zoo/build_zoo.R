# The model zoo: one plain bundle per model family rscore scores, fitted on data sets
# that ship with R and its packages, and what each package's own predict() answers.
#
#   Rscript examples/zoo/build_zoo.R OUT_DIR        (make setup: examples/zoo/build)
#
# OUT_DIR/<family>/ is a bundle as a new user would hand it over: saveRDS(fit) and an
# rscore.toml with its name (and a [predict] argument only where the package's predict()
# cannot do without one: gbm's n.trees). No ptype.rds, no score.R, no library() call:
# rscore must find the package, the inputs and the output shape on its own.
#
# OUT_DIR/expected.json: for each bundle, 257 rows drawn from the data (the request)
# and the predictions of the package's predict(), called here directly with the
# arguments rscore's adapter uses by default, shaped as docs/bundles.md#outputs says
# (classifiers: .pred_class and .pred_<level>). rscore's R code is never sourced here.

args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[[1]] else "examples/zoo/build"
dir.create(out, recursive = TRUE, showWarnings = FALSE)
set.seed(20261126)
Sys.setenv(TZ = "UTC")  # else caret's lubridate asks timedatectl, which containers lack
suppressPackageStartupMessages(library(survival))  # Surv() in the survival formulas

ROWS <- 257L  # more than the sidecar's 256-row batch
zoo <- list()

bundle <- function(name, fit, rows, predictions, toml = character()) {
  dir <- file.path(out, name)
  dir.create(dir, recursive = TRUE, showWarnings = FALSE)
  saveRDS(fit, file.path(dir, "model.rds"))
  writeLines(c(sprintf('name = "%s"', name), toml), file.path(dir, "rscore.toml"))
  if (is.matrix(predictions) && ncol(predictions) == 1L) predictions <- predictions[, 1L]
  if (is.factor(predictions)) predictions <- as.character(predictions)
  if (!is.data.frame(predictions)) predictions <- unname(as.vector(predictions))
  stopifnot(NROW(predictions) == nrow(rows), !anyNA(predictions))
  zoo[[name]] <<- list(rows = rows, predictions = predictions)
}

# ROWS rows of `data`'s `columns`, drawn with replacement (row names dropped).
draw <- function(data, columns) {
  rows <- data[sample(nrow(data), ROWS, replace = TRUE), columns, drop = FALSE]
  rownames(rows) <- NULL
  rows
}

# The classifier convention: the class the model predicts, then each level's probability.
classes <- function(predicted, probabilities) {
  probabilities <- as.matrix(probabilities)
  result <- data.frame(.pred_class = as.character(predicted), stringsAsFactors = FALSE)
  for (level in colnames(probabilities)) {
    result[[paste0(".pred_", level)]] <- unname(probabilities[, level])
  }
  result
}
most_probable <- function(p) colnames(p)[max.col(p, ties.method = "first")]

iris_x <- names(iris)[1:4]
lung <- na.omit(survival::lung[, c("time", "status", "age", "sex", "ph.ecog")])

# --- ranger: a probability forest ----------------------------------------------------
fit <- ranger::ranger(Species ~ ., data = iris, probability = TRUE, num.trees = 100, seed = 1)
rows <- draw(iris, iris_x)
p <- predict(fit, data = rows)$predictions
bundle("ranger", fit, rows, classes(most_probable(p), p))

# --- glmnet: cv.glmnet (lambda.1se) and binomial, multinomial paths (smallest lambda) --
x <- as.matrix(mtcars[, c("wt", "hp", "qsec", "drat", "disp")])
fit <- glmnet::cv.glmnet(x, mtcars$mpg, nfolds = 5)
rows <- draw(mtcars, colnames(x))
bundle("cv-glmnet", fit, rows, predict(fit, newx = as.matrix(rows)))

fit <- glmnet::glmnet(x, factor(mtcars$am, labels = c("auto", "manual")), family = "binomial")
rows <- draw(mtcars, colnames(x))
s <- min(fit$lambda)
p <- predict(fit, newx = as.matrix(rows), s = s, type = "response")[, 1]
bundle("glmnet-binomial", fit, rows, classes(
  predict(fit, newx = as.matrix(rows), s = s, type = "class")[, 1],
  cbind(auto = 1 - p, manual = p)
))

fit <- glmnet::glmnet(as.matrix(iris[, iris_x]), iris$Species, family = "multinomial")
rows <- draw(iris, iris_x)
s <- min(fit$lambda)
p <- predict(fit, newx = as.matrix(rows), s = s, type = "response")[, , 1]
bundle("glmnet-multinomial", fit, rows, classes(
  predict(fit, newx = as.matrix(rows), s = s, type = "class")[, 1], p
))

# --- MASS: lda, qda, polr --------------------------------------------------------------
for (family in c("lda", "qda")) {
  fit <- get(family, asNamespace("MASS"))(Species ~ ., data = iris)
  rows <- draw(iris, iris_x)
  p <- predict(fit, newdata = rows)
  bundle(family, fit, rows, classes(p$class, p$posterior))
}

housing <- MASS::housing
fit <- MASS::polr(Sat ~ Infl + Type + Cont, weights = Freq, data = housing)
rows <- draw(housing, c("Infl", "Type", "Cont"))
bundle("polr", fit, rows, classes(predict(fit, newdata = rows, type = "class"),
                                  predict(fit, newdata = rows, type = "probs")))

# --- nnet::multinom ------------------------------------------------------------------
fit <- nnet::multinom(Species ~ ., data = iris, trace = FALSE)
rows <- draw(iris, iris_x)
bundle("multinom", fit, rows, classes(predict(fit, newdata = rows, type = "class"),
                                      predict(fit, newdata = rows, type = "probs")))

# --- e1071: svm with probabilities, naiveBayes ------------------------------------------
fit <- e1071::svm(Species ~ ., data = iris, probability = TRUE)
rows <- draw(iris, iris_x)
p <- predict(fit, newdata = rows, probability = TRUE)
bundle("svm", fit, rows, classes(p, attr(p, "probabilities")[, levels(iris$Species)]))

fit <- e1071::naiveBayes(Species ~ ., data = iris)
rows <- draw(iris, iris_x)
bundle("naive-bayes", fit, rows, classes(predict(fit, newdata = rows, type = "class"),
                                         predict(fit, newdata = rows, type = "raw")))

# --- mgcv::gam: smooths and a factor() of a numeric input -------------------------------
fit <- mgcv::gam(mpg ~ s(wt) + s(hp) + factor(cyl), data = mtcars)
rows <- draw(mtcars, c("wt", "hp", "cyl"))
bundle("gam", fit, rows, mgcv::predict.gam(fit, newdata = rows, type = "response"))

# --- party::ctree (S4) on airquality's integer columns; partykit::ctree --------------------
air <- na.omit(airquality)
fit <- party::ctree(Ozone ~ Solar.R + Wind + Temp + Month, data = air)
rows <- draw(air, c("Solar.R", "Wind", "Temp", "Month"))
bundle("party-ctree", fit, rows, predict(fit, newdata = rows))

fit <- partykit::ctree(Species ~ ., data = iris)
rows <- draw(iris, iris_x)
bundle("partykit-ctree", fit, rows, classes(predict(fit, newdata = rows, type = "response"),
                                            predict(fit, newdata = rows, type = "prob")))

# --- kernlab::ksvm (S4) with a probability model ------------------------------------------
fit <- kernlab::ksvm(Species ~ ., data = iris, prob.model = TRUE)
rows <- draw(iris, iris_x)
bundle("ksvm", fit, rows, classes(kernlab::predict(fit, rows, type = "response"),
                                  kernlab::predict(fit, rows, type = "probabilities")))

# --- caret::train ------------------------------------------------------------------------
fit <- caret::train(Species ~ ., data = iris, method = "lda",
                    trControl = caret::trainControl(method = "cv", number = 3))
rows <- draw(iris, iris_x)
bundle("caret-train", fit, rows, classes(predict(fit, newdata = rows, type = "raw"),
                                         predict(fit, newdata = rows, type = "prob")))

# --- earth ----------------------------------------------------------------------------
fit <- earth::earth(mpg ~ wt + hp + qsec, data = mtcars)
rows <- draw(mtcars, c("wt", "hp", "qsec"))
bundle("earth", fit, rows, predict(fit, newdata = rows, type = "response"))

# --- survival: coxph (linear predictor), survreg (predicted survival time) ----------------
fit <- coxph(Surv(time, status) ~ age + sex + ph.ecog, data = lung)
rows <- draw(lung, c("age", "sex", "ph.ecog"))
bundle("coxph", fit, rows, predict(fit, newdata = rows, type = "lp"))

fit <- survreg(Surv(futime, fustat) ~ age + ecog.ps, data = survival::ovarian, dist = "weibull")
rows <- draw(survival::ovarian, c("age", "ecog.ps"))
bundle("survreg", fit, rows, predict(fit, newdata = rows, type = "response"))

# --- nls, loess -----------------------------------------------------------------------
dnase <- DNase[DNase$Run == 1, ]
fit <- nls(density ~ SSlogis(log(conc), Asym, xmid, scal), data = dnase)
rows <- draw(dnase, "conc")
bundle("nls", fit, rows, predict(fit, newdata = rows))

fit <- loess(mpg ~ wt + hp, data = mtcars)
rows <- draw(mtcars, c("wt", "hp"))
bundle("loess", fit, rows, predict(fit, newdata = rows))

# --- pls, quantreg, ordinal, mda --------------------------------------------------------
fit <- pls::plsr(mpg ~ wt + hp + qsec + drat + disp, ncomp = 3, data = mtcars)
rows <- draw(mtcars, c("wt", "hp", "qsec", "drat", "disp"))
bundle("pls", fit, rows, predict(fit, newdata = rows, ncomp = 3)[, 1, 1])

fit <- quantreg::rq(mpg ~ wt + hp, data = mtcars, tau = 0.5)
rows <- draw(mtcars, c("wt", "hp"))
bundle("rq", fit, rows, predict(fit, newdata = rows))

wine <- ordinal::wine
fit <- ordinal::clm(rating ~ temp + contact, data = wine)
rows <- draw(wine, c("temp", "contact"))
bundle("clm", fit, rows, classes(predict(fit, newdata = rows, type = "class")$fit,
                                 predict(fit, newdata = rows, type = "prob")$fit))

for (family in c("fda", "mda")) {
  fit <- get(family, asNamespace("mda"))(Species ~ ., data = iris)
  rows <- draw(iris, iris_x)
  bundle(family, fit, rows, classes(predict(fit, newdata = rows, type = "class"),
                                    predict(fit, newdata = rows, type = "posterior")))
}

# --- lme4 (S4): the grouping factor is an input too -----------------------------------------
sleep <- lme4::sleepstudy
fit <- lme4::lmer(Reaction ~ Days + (Days | Subject), data = sleep)
rows <- draw(sleep, c("Days", "Subject"))
bundle("lmer", fit, rows, predict(fit, newdata = rows, type = "response"))

# --- nlme: lme, whose grouping factor the terms do not name ------------------------------
orthodont <- as.data.frame(nlme::Orthodont)
fit <- nlme::lme(distance ~ age + Sex, random = ~ 1 | Subject, data = orthodont)
rows <- draw(orthodont, c("age", "Sex", "Subject"))
bundle("lme", fit, rows, predict(fit, newdata = rows))

# --- pscl::zeroinfl: two formulas, an integer input ------------------------------------
chemists <- pscl::bioChemists
fit <- pscl::zeroinfl(art ~ fem + ment | ment, data = chemists)
rows <- draw(chemists, c("fem", "ment"))
bundle("zeroinfl", fit, rows, predict(fit, newdata = rows, type = "response"))

# --- no adapter needed: glm on esoph's ordered factors, randomForest, rpart, gbm ----------
fit <- glm(cbind(ncases, ncontrols) ~ agegp + tobgp + alcgp, family = binomial, data = esoph)
rows <- draw(esoph, c("agegp", "tobgp", "alcgp"))
bundle("glm-esoph", fit, rows, predict(fit, newdata = rows, type = "response"),
       toml = c("[predict]", 'type = "response"'))

fit <- randomForest::randomForest(Species ~ ., data = iris, ntree = 100)
rows <- draw(iris, iris_x)
bundle("random-forest", fit, rows, predict(fit, newdata = rows))

boston <- MASS::Boston
fit <- rpart::rpart(medv ~ ., data = boston)
rows <- draw(boston, setdiff(names(boston), "medv"))
bundle("rpart", fit, rows, predict(fit, newdata = rows))

fit <- gbm::gbm(medv ~ ., data = boston, distribution = "gaussian", n.trees = 100,
                interaction.depth = 3, bag.fraction = 1)
rows <- draw(boston, setdiff(names(boston), "medv"))
bundle("gbm", fit, rows, predict(fit, newdata = rows, n.trees = 100),
       toml = c("[predict]", '"n.trees" = 100'))

writeLines(
  jsonlite::toJSON(zoo, digits = NA, dataframe = "rows", factor = "string", auto_unbox = TRUE,
                   na = "null"),
  file.path(out, "expected.json")
)
message("built ", length(zoo), " zoo bundles in ", out)
