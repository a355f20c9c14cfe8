# rscore's adapters: how to call predict() for the model families whose answer to a
# plain predict(model, newdata = data) is not one row per input row, or whose inputs
# the model records somewhere other than its terms.
#
# Sourced after rscore.R into the same private environment. An adapter is chosen by
# class: the first class of the model, in dispatch order, that has one. It is a list:
#   name      the family, as docs/bundles.md's table names it
#   predict   function(state, data, args): calls the package's own predict() with
#             `args` (the adapter's defaults, then rscore.toml's [predict], which win)
#             and returns what .shape_result() shapes (docs/bundles.md#outputs)
#   prototype function(state): the input columns the model records, or NULL (then the
#             terms are read, as for any model); a ptype.rds always wins
#   defaults  function(state): default predict() arguments (probabilities where the
#             model has them)
#   fills     the argument the data goes in (refused as a [predict] key)
#   also      classes whose predict() methods also take the arguments (the [predict]
#             keys are checked against their formals too)
#   accepts   argument names the method takes through `...`, for that check
# Classifiers that give probabilities answer with tidymodels' columns: `.pred_class`
# (the class the model predicts) and `.pred_<level>` (its probability) per level.
#
# Never: compute a prediction itself (only the package's predict() does), or change
# what predict() computes; an adapter only chooses arguments, passes the data in the
# form the method wants, and reshapes the answer. Nothing here prints.

.ADAPTERS <- list()

.adapter <- function(classes, name, predict = .predict_on, prototype = function(state) NULL,
                     defaults = function(state) list(), fills = "newdata",
                     also = character(), accepts = character()) {
  adapter <- list(name = name, predict = predict, prototype = prototype, defaults = defaults,
                  fills = fills, also = also, accepts = accepts)
  for (cl in classes) .ADAPTERS[[cl]] <<- adapter
}

# The adapter of the first of the model's classes that has one, or NULL.
.adapter_for <- function(state) {
  for (cl in .dispatch_classes(state)) if (!is.null(.ADAPTERS[[cl]])) return(.ADAPTERS[[cl]])
  NULL
}

# predict(state, <data_as> = data, <args>), called as a user would write it (so an
# error names the call, never a deparsed model): rscore.R's .predict_call.
.predict_on <- function(state, data, args, data_as = "newdata") eval(.predict_call(args, data_as))

# The classifier convention: `.pred_class` (the model's own class when it gives one,
# else the most probable level, the first on a tie) and `.pred_<level>` per level.
.class_probabilities <- function(probabilities, predicted = NULL) {
  probabilities <- as.matrix(probabilities)
  levels <- colnames(probabilities)
  if (is.null(predicted)) predicted <- levels[max.col(probabilities, ties.method = "first")]
  c(list(.pred_class = as.character(predicted)),
    stats::setNames(lapply(seq_along(levels), function(j) unname(probabilities[, j])),
                    paste0(".pred_", levels)))
}

# A probability matrix that R dropped to a named vector for one row, as that row.
.as_rows <- function(p, nrows) {
  if (is.null(dim(p)) && nrows == 1L) matrix(p, nrow = 1L, dimnames = list(NULL, names(p))) else p
}

# A one-column matrix as a plain vector (one value per row), whatever its column name.
.one_column <- function(p) if (is.matrix(p) && ncol(p) == 1L) p[, 1L] else p

# Numeric input columns, by name.
.numeric_columns <- function(names) lapply(names, function(name) .column(name, "numeric"))

# The columns `inputs` of a training data.frame the model keeps, with their R types.
.kept_columns <- function(frame, inputs) {
  inputs <- intersect(inputs, names(frame))
  if (!length(inputs)) return(NULL)
  .frame_columns(frame[0, inputs, drop = FALSE])
}

# --- ranger ---------------------------------------------------------------------------
# predict.ranger takes `data`, not `newdata`, and answers with a list: $predictions.
.adapter("ranger", "ranger",
  predict = function(state, data, args) {
    p <- .predict_on(state, data, args, "data")$predictions
    if (identical(state$treetype, "Probability estimation")) {
      return(.class_probabilities(.as_rows(p, nrow(data))))
    }
    p
  },
  # ranger records names only: the JSON values decide each column's type.
  prototype = function(state) {
    lapply(state$forest$independent.variable.names, function(name) .column(name, "any"))
  },
  fills = "data")

# --- glmnet, cv.glmnet ----------------------------------------------------------------
# A matrix `newx` of the training columns, in training order (the coefficients' names).
.glmnet_fit <- function(state) if (inherits(state, "cv.glmnet")) state$glmnet.fit else state

.glmnet_inputs <- function(state) {
  beta <- .glmnet_fit(state)$beta
  rownames(if (is.list(beta)) beta[[1]] else beta)
}

.adapter(c("cv.glmnet", "glmnet"), "glmnet",
  predict = function(state, data, args) {
    x <- as.matrix(data[, .glmnet_inputs(state), drop = FALSE])
    p <- .predict_on(state, x, args, "newx")
    fit <- .glmnet_fit(state)
    if (identical(args$type, "response") && !is.null(fit$classnames)) {
      if (inherits(fit, "lognet") && is.matrix(p) && ncol(p) == 1L) {
        probabilities <- cbind(1 - p[, 1L], p[, 1L])
        colnames(probabilities) <- fit$classnames
        return(.class_probabilities(probabilities))
      }
      if (inherits(fit, "multnet") && length(dim(p)) == 3L && dim(p)[3] == 1L) {
        return(.class_probabilities(.drop_unit_dims(p)))
      }
    }
    .one_column(p)
  },
  prototype = function(state) .numeric_columns(.glmnet_inputs(state)),
  # cv.glmnet: its own default, the largest lambda within one standard error of the
  # best; a plain glmnet: the smallest lambda of its path, the least penalized fit.
  defaults = function(state) {
    list(s = if (inherits(state, "cv.glmnet")) "lambda.1se" else min(state$lambda),
         type = "response")
  },
  fills = "newx", also = "glmnet")

# --- MASS: lda, qda, polr ---------------------------------------------------------------
.adapter(c("lda", "qda"), "lda / qda",
  predict = function(state, data, args) {
    p <- .predict_on(state, data, args)
    if (is.list(p) && !is.null(p$posterior)) .class_probabilities(p$posterior, p$class) else p
  },
  # Fitted from a matrix, there are no terms: the group means name the inputs.
  prototype = function(state) {
    if (is.null(state$terms)) .numeric_columns(colnames(state$means)) else NULL
  })

.adapter("polr", "polr",
  predict = function(state, data, args) {
    p <- .predict_on(state, data, args)
    if (identical(args$type, "probs")) .class_probabilities(.as_rows(p, nrow(data))) else p
  },
  defaults = function(state) list(type = "probs"))

# --- nnet::multinom ---------------------------------------------------------------------
# type = "probs" drops one row to a vector, and two classes to P(second class).
.adapter("multinom", "multinom",
  predict = function(state, data, args) {
    p <- .predict_on(state, data, args)
    if (!identical(args$type, "probs")) return(p)
    if (length(state$lev) == 2L) {
      p <- cbind(1 - as.vector(p), as.vector(p))
      colnames(p) <- state$lev
    }
    .class_probabilities(.as_rows(p, nrow(data)))
  },
  defaults = function(state) list(type = "probs"))

# --- e1071: svm, naiveBayes -------------------------------------------------------------
# svm: probabilities only when fitted with probability = TRUE, and only if asked.
.adapter("svm", "svm",
  predict = function(state, data, args) {
    p <- .predict_on(state, data, args)
    probabilities <- attr(p, "probabilities")
    if (isTRUE(args$probability) && !is.null(probabilities)) {
      return(.class_probabilities(probabilities[, state$levels, drop = FALSE], p))
    }
    attr(p, "probabilities") <- NULL
    p
  },
  defaults = function(state) {
    classifies <- state$type %in% c(0, 1)  # C- and nu-classification
    if (isTRUE(state$compprob) && classifies) list(probability = TRUE) else list()
  })

.adapter("naiveBayes", "naiveBayes",
  predict = function(state, data, args) {
    p <- .predict_on(state, data, args)
    if (identical(args$type, "raw")) .class_probabilities(.as_rows(p, nrow(data))) else p
  },
  # No terms: the tables name the inputs; a factor's table names its levels.
  prototype = function(state) {
    lapply(names(state$tables), function(name) {
      if (isTRUE(state$isnumeric[[name]])) return(.column(name, "numeric"))
      .column(name, "factor", dimnames(state$tables[[name]])[[2]])
    })
  },
  defaults = function(state) list(type = "raw"))

# --- mgcv::gam --------------------------------------------------------------------------
# predict.gam answers with a 1-d array (a vector by the shape rule); the response scale
# by default, as for the other families (probabilities for a binomial gam).
.adapter("gam", "gam",
  # var.summary names every input (a factor with its levels); the model frame has the
  # exact R type of those it holds as they are (not inside factor() or the like).
  prototype = function(state) {
    lapply(names(state$var.summary), function(name) {
      .column_of(name, if (name %in% names(state$model)) state$model[[name]] else
        state$var.summary[[name]])
    })
  },
  defaults = function(state) list(type = "response"))

# --- party::ctree (S4), partykit::ctree ---------------------------------------------------
.party_response <- function(state) state@responses@variables[[1]]

.adapter("BinaryTree", "party::ctree",
  predict = function(state, data, args) {
    p <- .predict_on(state, data, args)
    levels <- levels(.party_response(state))
    if (identical(args$type, "prob") && is.list(p) && length(levels)) {
      return(.class_probabilities(matrix(unlist(p), ncol = length(levels), byrow = TRUE,
                                         dimnames = list(NULL, levels))))
    }
    .one_column(p)
  },
  # The training inputs, kept in the tree: their exact R types (ctree refuses a double
  # where it was fitted with an integer).
  prototype = function(state) .frame_columns(state@data@get("input")[0, , drop = FALSE]),
  defaults = function(state) {
    if (is.factor(.party_response(state))) list(type = "prob") else list()
  },
  accepts = "type")

.adapter("constparty", "partykit::ctree",
  predict = function(state, data, args) {
    p <- .predict_on(state, data, args)
    if (identical(args$type, "prob") && is.matrix(p)) .class_probabilities(p) else p
  },
  prototype = function(state) {
    .kept_columns(state$data, all.vars(stats::delete.response(state$terms)))
  },
  defaults = function(state) {
    if (is.factor(state$fitted[["(response)"]])) list(type = "prob") else list()
  })

# --- kernlab::ksvm (S4) -----------------------------------------------------------------
.ksvm_classifies <- function(state) {
  kernlab::type(state) %in% c("C-svc", "nu-svc", "C-bsvc", "spoc-svc", "kbb-svc")
}

.adapter("ksvm", "ksvm",
  predict = function(state, data, args) {
    if (!identical(args$type, "probabilities")) return(.one_column(.predict_on(state, data, args)))
    classes <- .predict_on(state, data, utils::modifyList(args, list(type = "response")))
    .class_probabilities(.predict_on(state, data, args), classes)
  },
  prototype = function(state) {
    if (inherits(state@terms, "terms")) .terms_columns(state@terms, state) else NULL
  },
  defaults = function(state) {
    fitted_with_probabilities <- length(kernlab::prob.model(state)) > 0L
    if (.ksvm_classifies(state) && fitted_with_probabilities) list(type = "probabilities") else list()
  })

# --- caret::train -----------------------------------------------------------------------
.adapter("train", "caret::train",
  predict = function(state, data, args) {
    if (!identical(args$type, "prob")) return(.predict_on(state, data, args))
    classes <- .predict_on(state, data, utils::modifyList(args, list(type = "raw")))
    .class_probabilities(.predict_on(state, data, args), classes)
  },
  # caret keeps a zero-row data.frame of the predictors it was trained on.
  prototype = function(state) if (is.data.frame(state$ptype)) .frame_columns(state$ptype),
  defaults = function(state) {
    probabilities <- identical(state$modelType, "Classification") && !is.null(state$modelInfo$prob)
    if (probabilities) list(type = "prob") else list()
  })

# --- earth ------------------------------------------------------------------------------
# One response: a one-column matrix named after it, answered as a plain vector.
.adapter("earth", "earth",
  predict = function(state, data, args) .one_column(.predict_on(state, data, args)),
  defaults = function(state) list(type = "response"))

# --- survival: coxph, survreg -------------------------------------------------------------
# Pinned here so the documented output does not move with the package's defaults.
.adapter("coxph", "coxph", defaults = function(state) list(type = "lp"))
.adapter("survreg", "survreg", defaults = function(state) list(type = "response"))

# --- nls --------------------------------------------------------------------------------
# No terms: the formula's variables that are not parameters are the inputs.
.adapter("nls", "nls",
  prototype = function(state) {
    formula <- stats::formula(state)
    .numeric_columns(setdiff(all.vars(formula[[length(formula)]]), names(stats::coef(state))))
  })

# --- pls (plsr, pcr) ----------------------------------------------------------------------
# predict.mvr answers n x responses x ncomp; by default all the model's components.
.adapter("mvr", "pls",
  predict = function(state, data, args) {
    .one_column(.drop_unit_dims(.predict_on(state, data, args)))
  },
  defaults = function(state) list(ncomp = state$ncomp))

# --- ordinal::clm -----------------------------------------------------------------------
# predict.clm answers list(fit = ...): probabilities of every level when the data has no
# response column (rscore's never has).
.adapter("clm", "ordinal::clm",
  predict = function(state, data, args) {
    p <- .predict_on(state, data, args)
    if (is.list(p) && !is.data.frame(p) && !is.null(p$fit)) p <- p$fit
    if (identical(args$type, "prob")) .class_probabilities(.as_rows(p, nrow(data))) else p
  },
  defaults = function(state) list(type = "prob"))

# --- mda: fda, mda ----------------------------------------------------------------------
.adapter(c("fda", "mda"), "mda / fda",
  predict = function(state, data, args) {
    p <- .predict_on(state, data, args)
    if (identical(args$type, "posterior")) .class_probabilities(.as_rows(p, nrow(data))) else p
  },
  defaults = function(state) list(type = "posterior"))

# --- lme4 (S4 merMod) ---------------------------------------------------------------------
# The terms name the fixed effects only: the model frame has the grouping factors too.
.adapter("merMod", "lme4",
  prototype = function(state) {
    formula <- stats::formula(state)
    .kept_columns(stats::model.frame(state), all.vars(formula[[length(formula)]]))
  },
  defaults = function(state) list(type = "response"))

# --- nlme: lme, gls -----------------------------------------------------------------------
# The terms name the fixed effects only; the data nlme keeps has the grouping factors.
.adapter(c("lme", "gls"), "nlme",
  prototype = function(state) {
    formula <- stats::formula(state)
    groups <- tryCatch(all.vars(nlme::getGroupsFormula(state)), error = function(e) NULL)
    data <- tryCatch(as.data.frame(nlme::getData(state)), error = function(e) NULL)
    if (is.null(data)) return(NULL)
    .kept_columns(data, unique(c(all.vars(formula[[length(formula)]]), groups)))
  })

# --- pscl: zeroinfl, hurdle -----------------------------------------------------------------
# Two formulas (count | zero): the model frame holds the inputs of both.
.adapter(c("zeroinfl", "hurdle"), "pscl",
  prototype = function(state) {
    if (!is.data.frame(state$model)) return(NULL)
    .kept_columns(state$model, all.vars(stats::delete.response(state$terms$full)))
  })
