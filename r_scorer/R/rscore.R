# rscore's R side: load a bundle, describe its inputs, score and shape the result.
#
# Sourced once per worker into a private environment (never the global one, so a
# bundle's own names cannot clash with these). Errors that reach Python are messages
# that name the file or class at fault; nothing here prints to stdout.

# --- packages -------------------------------------------------------------------

.attach_package <- function(pkg, why) {
  if (!requireNamespace(pkg, quietly = TRUE)) {
    stop(sprintf("R package '%s' (%s) is not installed", pkg, why), call. = FALSE)
  }
  suppressPackageStartupMessages(library(pkg, character.only = TRUE))
  pkg
}

# The namespace that provides predict() for the first of `classes` that has one
# (readRDS of some models, e.g. rpart, already loads it); NULL when none does.
.predict_method_home <- function(classes) {
  for (cl in classes) {
    method <- utils::getS3method("predict", cl, optional = TRUE)
    if (!is.null(method)) return(environmentName(environment(method)))
  }
  NULL
}

# The installed package whose NAMESPACE registers S3method(predict, <class>) for the
# first of `classes` that any package registers; NA when none does. Reads each
# package's parsed NAMESPACE (Meta/nsInfo.rds), which is what loadNamespace() uses.
.predict_package <- function(classes) {
  registry <- list()
  for (lib in .libPaths()) {
    for (pkg in list.files(lib)) {
      info <- file.path(lib, pkg, "Meta", "nsInfo.rds")
      if (!file.exists(info)) next
      s3 <- tryCatch(readRDS(info)$S3methods, error = function(e) NULL)
      if (is.null(s3) || !NROW(s3)) next
      registered <- s3[s3[, 1] == "predict", 2]
      for (cl in registered) if (is.null(registry[[cl]])) registry[[cl]] <- pkg
    }
  }
  for (cl in classes) if (!is.null(registry[[cl]])) return(registry[[cl]])
  NA_character_
}

# Classes worth finding a predict method for: the state's own, and those of the
# elements of a list state (a score.R may keep list(model = fit, ...)).
.state_classes <- function(state) {
  classes <- if (is.object(state)) class(state) else character()
  if (is.list(state) && !is.object(state)) {
    for (item in state) if (is.object(item)) classes <- c(classes, class(item))
  }
  unique(classes)
}

.load_predict_packages <- function(state, required, fix = "") {
  loaded <- character()
  classes <- .state_classes(state)
  if (!length(classes)) return(loaded)
  home <- .predict_method_home(classes)
  if (!is.null(home)) {
    # Loaded but maybe not attached: attach it, as the user's training session had it.
    if (nzchar(home) && !(paste0("package:", home) %in% search())) {
      loaded <- .attach_package(home, sprintf("provides predict() for class '%s'", classes[1]))
    }
    return(loaded)
  }
  pkg <- .predict_package(classes)
  if (!is.na(pkg)) {
    loaded <- .attach_package(pkg, sprintf("registers predict() for class '%s'", classes[1]))
  } else if (required) {
    stop(sprintf(
      "no installed R package registers a predict() method for class %s; install the package that fitted the model, or list it in rscore.toml 'packages'%s",
      paste0("'", classes, "'", collapse = ", "), fix
    ), call. = FALSE)
  }
  loaded
}

# --- input prototype ------------------------------------------------------------

.kind_of <- function(x) {
  if (is.ordered(x)) "ordered"
  else if (is.factor(x)) "factor"
  else if (is.logical(x)) "logical"
  else if (is.integer(x)) "integer"
  else if (is.numeric(x)) "numeric"
  else if (is.character(x)) "character"
  else "any"
}

.column <- function(name, kind, levels = character()) {
  list(name = name, kind = kind, levels = as.character(levels))
}

.ptype_prototype <- function(ptype) {
  if (!is.data.frame(ptype)) {
    stop("ptype.rds must hold a data.frame of the inputs (zero rows is enough)", call. = FALSE)
  }
  lapply(names(ptype), function(name) {
    x <- ptype[[name]]
    .column(name, .kind_of(x), if (is.factor(x)) levels(x) else character())
  })
}

.model_terms <- function(model) {
  tt <- tryCatch(stats::terms(model), error = function(e) NULL)
  if (is.null(tt) && is.list(model) && inherits(model$Terms, "terms")) tt <- model$Terms  # gbm
  if (inherits(tt, "terms")) tt else NULL
}

# Training levels of a factor input, wherever the fitting package keeps them.
.training_levels <- function(model, name) {
  candidates <- list(
    if (is.list(model)) model$xlevels[[name]],
    attr(model, "xlevels")[[name]],                                   # rpart
    if (is.list(model) && is.list(model$forest)) model$forest$xlevels[[name]]  # randomForest
  )
  if (is.list(model) && !is.null(model$var.names) && !is.null(model$var.levels)) {  # gbm
    at <- match(name, model$var.names)
    if (!is.na(at) && model$var.type[at] > 0) candidates <- c(candidates, list(model$var.levels[[at]]))
  }
  for (levels in candidates) if (is.character(levels) && length(levels)) return(levels)
  NULL
}

.terms_prototype <- function(model) {
  tt <- .model_terms(model)
  if (is.null(tt)) return(NULL)
  classes <- attr(tt, "dataClasses")
  inputs <- all.vars(stats::delete.response(tt))
  if (!length(inputs) || is.null(classes)) return(NULL)
  kinds <- c(numeric = "numeric", factor = "factor", ordered = "ordered",
             logical = "logical", character = "character")
  lapply(inputs, function(name) {
    class <- if (name %in% names(classes)) classes[[name]] else "other"
    kind <- if (class %in% names(kinds)) kinds[[class]] else "any"  # used inside an expression
    levels <- character()
    if (kind %in% c("factor", "ordered")) {
      levels <- .training_levels(model, name)
      if (is.null(levels)) kind <- "any"  # levels unknown: let predict() judge the strings
    }
    .column(name, kind, levels)
  })
}

.prototype <- function(model_dir, state) {
  ptype_file <- file.path(model_dir, "ptype.rds")
  if (file.exists(ptype_file)) {
    ptype <- tryCatch(readRDS(ptype_file), error = function(e) {
      stop(.rds_error("ptype.rds", ptype_file, e), call. = FALSE)
    })
    return(list(source = "ptype.rds", columns = .ptype_prototype(ptype)))
  }
  columns <- tryCatch(.terms_prototype(state), error = function(e) NULL)
  if (is.null(columns)) return(list(source = "none", columns = list()))
  list(source = "terms", columns = columns)
}

# --- loading --------------------------------------------------------------------

# What save() writes (after gzip/bzip2/xz, which gzfile() undoes): "RD" + X (xdr),
# A (ascii) or B (native binary) + format version + newline. saveRDS() writes none.
.SAVE_MAGIC <- c("RDX2\n", "RDX3\n", "RDA2\n", "RDA3\n", "RDB2\n", "RDB3\n")

.written_by_save <- function(path) {
  head <- tryCatch({
    con <- gzfile(path, "rb")
    on.exit(close(con))
    readBin(con, "raw", 5L)
  }, error = function(e) raw())
  any(vapply(.SAVE_MAGIC, function(magic) identical(head, charToRaw(magic)), logical(1)))
}

# readRDS()'s error for a bundle file, one line: a file written by save() says so and
# how to fix it, instead of R's "unknown input format".
.rds_error <- function(label, path, e) {
  if (.written_by_save(path)) {
    return(sprintf(
      "%s was written by save(), which readRDS() cannot read: in R, load() it and write the object with saveRDS(x, \"%s\")",
      label, label
    ))
  }
  sprintf("%s: %s", label, conditionMessage(e))
}

# TRUE when `fn` can be called with `n` positional arguments.
.takes <- function(fn, n) {
  if (is.primitive(fn)) return(TRUE)
  arguments <- names(formals(fn))
  "..." %in% arguments || length(arguments) >= n
}

# TRUE when predict(state, ...) dispatches to a method (S3 on the state's class, or a
# default method some attached package provides).
.predict_dispatches <- function(state) {
  if (isS4(state)) return(TRUE)  # S4 predict methods: left to predict() itself
  for (cl in c(.class2(state), "default")) {
    if (!is.null(utils::getS3method("predict", cl, optional = TRUE))) return(TRUE)
  }
  FALSE
}

.default_score <- function(predict_args) {
  call <- as.call(c(list(quote(predict), quote(state), newdata = quote(data)), predict_args))
  function(state, data) eval(call)
}

# Load a bundle. Returns list(state, score, prototype, packages) or stops with a
# message that names the file or class at fault.
.load_bundle <- function(model_dir, packages, predict_args) {
  loaded <- vapply(packages, .attach_package, character(1), why = "listed in rscore.toml")
  script <- file.path(model_dir, "score.R")
  env <- new.env(parent = globalenv())
  if (file.exists(script)) {
    tryCatch(sys.source(script, envir = env, keep.source = FALSE), error = function(e) {
      stop(sprintf("score.R: %s", conditionMessage(e)), call. = FALSE)
    })
  }
  has <- function(name) exists(name, envir = env, inherits = FALSE)
  for (name in c("init", "score")) {
    if (has(name) && !is.function(get(name, envir = env))) {
      stop(sprintf("score.R: '%s' must be a function", name), call. = FALSE)
    }
  }
  if (has("init") && !.takes(env$init, 1)) {
    stop("score.R: init() must take one argument, init(model_dir)", call. = FALSE)
  }
  if (has("score") && !.takes(env$score, 2)) {
    stop("score.R: score() must take two arguments, score(state, data)", call. = FALSE)
  }
  rds <- file.path(model_dir, "model.rds")
  if (has("init")) {
    init <- env$init  # so a warning from it reads "In init(model_dir) : ..."
    state <- tryCatch(init(model_dir), error = function(e) {
      stop(sprintf("score.R: init() failed: %s", conditionMessage(e)), call. = FALSE)
    })
  } else if (file.exists(rds)) {
    state <- tryCatch(readRDS(rds), error = function(e) {
      stop(.rds_error("model.rds", rds, e), call. = FALSE)
    })
  } else {
    stop("bundle has neither model.rds nor an init() in score.R", call. = FALSE)
  }
  custom_score <- has("score")
  # Without score(), every request calls predict(state, newdata = data): a state that
  # predict() cannot dispatch on would make every request a 500, so fail now instead.
  fix <- if (custom_score) "" else if (has("init")) {
    "; or define score(state, data) in score.R (it defines init() but no score())"
  } else {
    "; or add a score.R that defines score(state, data)"
  }
  loaded <- c(loaded, .load_predict_packages(state, required = !custom_score, fix = fix))
  if (!custom_score && !.predict_dispatches(state)) {
    what <- if (is.object(state)) {
      sprintf("an object of class %s", paste0("'", class(state), "'", collapse = ", "))
    } else {
      sprintf("a %s with no class", paste(.class2(state), collapse = "/"))
    }
    if (has("init")) {
      stop(sprintf(
        "score.R defines init() but no score(), and the default score, predict(state, newdata = data), cannot score what init() returns (%s): define score(state, data) in score.R, or remove init() to score model.rds with predict()",
        what
      ), call. = FALSE)
    }
    stop(sprintf(
      "model.rds holds %s, which predict() cannot score: add a score.R that defines score(state, data)",
      what
    ), call. = FALSE)
  }
  score <- if (custom_score) env$score else .default_score(predict_args)
  list(
    state = state,
    score = score,
    prototype = .prototype(model_dir, state),
    packages = unique(unname(loaded))
  )
}

# --- scoring --------------------------------------------------------------------

# Status codes of .score()'s answer, read by position in Python (rconvert.py): cheaper
# through rpy2 than names.
.VECTOR <- 0L   # list(0L, values): one value per row
.COLUMNS <- 1L  # list(1L, names, list of columns): one object per row
.FAILED <- 2L   # list(2L, message)

# Shape a score() result: a vector (factors as labels) or named columns, each with one
# value per row. Stops with a message otherwise.
.shape_result <- function(x, nrows) {
  if (is.atomic(x) && is.null(dim(x))) {  # the common case first: a plain vector
    if (length(x) != nrows) {
      stop(sprintf("score() returned %d values for %d rows", length(x), nrows), call. = FALSE)
    }
    return(list(.VECTOR, .plain(x)))
  }
  d <- dim(x)
  if (length(d) > 2 && all(d[-(1:2)] == 1)) x <- array(x, dim = d[1:2], dimnames = dimnames(x)[1:2])
  if (is.matrix(x)) {
    names <- colnames(x)
    if (is.null(names)) names <- paste0("V", seq_len(ncol(x)))
    x <- lapply(seq_len(ncol(x)), function(j) x[, j])
  } else if (is.data.frame(x)) {
    names <- names(x)
    x <- as.list(x)
  } else if (is.list(x) && !is.null(names(x)) && all(vapply(x, is.atomic, logical(1)))) {
    names <- names(x)
  } else {
    stop(sprintf(
      "score() returned an object of class '%s'; expected a vector, factor, matrix, data.frame or named list of columns",
      paste(class(x), collapse = "/")
    ), call. = FALSE)
  }
  if (!length(x)) stop("score() returned no columns", call. = FALSE)
  for (i in seq_along(x)) {
    if (length(x[[i]]) != nrows) {
      stop(sprintf("score() returned column '%s' with %d values for %d rows",
                   names[i], length(x[[i]]), nrows), call. = FALSE)
    }
    x[[i]] <- .plain(x[[i]])
  }
  list(.COLUMNS, as.character(names), unname(x))
}

# An atomic vector as Python reads it: factors as labels. Other attributes (names,
# dim) are ignored there, so they are not stripped here (that would copy).
.plain <- function(x) {
  if (is.factor(x)) return(as.character(x))
  if (!is.atomic(x)) stop("score() returned a column that is not atomic", call. = FALSE)
  x
}

# Call score(state, data) and shape its result; errors come back as data, not as R
# conditions, so rpy2 never formats a deparsed model into a message. (Warnings are
# off while serving: see LoadedModel.)
.score <- function(score, state, data) {
  tryCatch(
    .shape_result(score(state, data), nrow(data)),
    error = function(e) list(.FAILED, conditionMessage(e))
  )
}

# Serving mode: warnings from predict() would be printed per request, at thousands a
# second; they were shown while the bundle loaded.
.serving_options <- function() options(warn = -1)

# A warning as one line of text, the way R prints it: "In <call> : <message>".
.describe_warning <- function(w) {
  call <- conditionCall(w)
  if (is.null(call)) return(conditionMessage(w))
  sprintf("In %s : %s", paste(deparse(call, nlines = 1L), collapse = ""), conditionMessage(w))
}

# Load a bundle without letting a condition escape: list(ok, value or message,
# warnings). Warnings raised while loading (score.R, init(), packages) are collected
# and returned, so Python logs each as one warning (embedded R would otherwise drop
# them: rpy2 never reaches the top level where R prints deferred warnings).
.try_load_bundle <- function(model_dir, packages, predict_args) {
  warnings <- character()
  outcome <- tryCatch(
    withCallingHandlers(
      list(ok = TRUE, value = .load_bundle(model_dir, packages, predict_args)),
      warning = function(w) {
        warnings <<- c(warnings, .describe_warning(w))
        invokeRestart("muffleWarning")
      }
    ),
    error = function(e) list(ok = FALSE, message = conditionMessage(e))
  )
  outcome$warnings <- warnings
  outcome
}
