# rscore's R side: load a bundle, describe its inputs, score and shape the result.
#
# Sourced once per worker into a private environment (never the global one, so a
# bundle's own names cannot clash with these). Errors that reach Python are messages
# that name the file or class at fault; nothing here prints to stdout.

# --- packages and dispatch -------------------------------------------------------

.attach_package <- function(pkg, why) {
  if (!requireNamespace(pkg, quietly = TRUE)) {
    stop(sprintf("R package '%s' (%s) is not installed", pkg, why), call. = FALSE)
  }
  suppressPackageStartupMessages(library(pkg, character.only = TRUE))
  pkg
}

# The classes predict() dispatches on, in R's order: an S4 object's class and its
# superclasses (is()), an S3 object's class vector.
.dispatch_classes <- function(state) {
  if (isS4(state)) methods::is(state) else class(state)
}

# Which installed packages register S3method(predict, <class>), by class (libraries in
# .libPaths() order), read from each package's parsed NAMESPACE (Meta/nsInfo.rds, what
# loadNamespace() uses), and what was searched, for the error when nothing is found.
# Built once per worker, and only when a class has no predict() method loaded already.
.predict_registry <- local({
  cached <- NULL
  function() {
    if (!is.null(cached)) return(cached)
    by_class <- list()
    searched <- 0L
    for (lib in .libPaths()) {
      for (pkg in list.files(lib)) {
        info <- file.path(lib, pkg, "Meta", "nsInfo.rds")
        if (!file.exists(info)) next
        searched <- searched + 1L
        s3 <- tryCatch(readRDS(info)$S3methods, error = function(e) NULL)
        if (is.null(s3) || !NROW(s3)) next
        for (cl in s3[s3[, 1] == "predict", 2]) by_class[[cl]] <- unique(c(by_class[[cl]], pkg))
      }
    }
    cached <<- list(by_class = by_class, packages = searched, libraries = .libPaths())
    cached
  }
})

# An S4 predict method for `cl`, or NULL. (readRDS() of an S4 object loads the
# namespace of its class, which is where its methods live.)
.s4_predict <- function(cl) {
  tryCatch(methods::getMethod("predict", cl, optional = TRUE), error = function(e) NULL)
}

# The predict() method R would call for `state`, found as R dispatches: for each class
# in order, an S4 method (S4 objects), an S3 method already loaded, or an installed
# package whose NAMESPACE registers one; the first class with any wins (so mgcv's
# predict.gam beats stats' predict.glm for c("gam", "glm", "lm")). Returns
# list(class, package, kind, method) with `package` loaded and attached, or NULL.
.find_predict <- function(state) {
  if (isS4(state)) {
    owner <- attr(class(state), "package")
    if (!is.null(owner) && nzchar(owner) && !owner %in% c(".GlobalEnv", "methods")) {
      .attach_package(owner, sprintf("defines the S4 class '%s' of the model", class(state)[1]))
    }
  }
  found <- NULL
  for (cl in .dispatch_classes(state)) {
    method <- if (isS4(state)) .s4_predict(cl) else NULL
    if (!is.null(method)) {
      found <- list(class = cl, kind = "S4", method = method,
                    package = environmentName(environment(method)))
      break
    }
    method <- utils::getS3method("predict", cl, optional = TRUE)
    if (!is.null(method)) {
      found <- list(class = cl, kind = "S3", method = method,
                    package = environmentName(environment(method)))
      break
    }
    owners <- .predict_registry()$by_class[[cl]]
    if (length(owners)) {
      .attach_package(owners[1], sprintf("registers predict() for class '%s'", cl))
      found <- list(class = cl, kind = "S3", package = owners[1],
                    method = utils::getS3method("predict", cl, optional = TRUE))
      break
    }
  }
  if (is.null(found)) return(NULL)
  # Loaded but maybe not attached: attach it, as the user's training session had it.
  if (found$package %in% loadedNamespaces() && !paste0("package:", found$package) %in% search()) {
    .attach_package(found$package, sprintf("provides predict() for class '%s'", found$class))
  }
  found
}

.SCORE_R_DOC <- "docs/bundles.md#writing-a-scorer"

# The start-up error for a model no predict() method can score: every class tried, the
# packages looked in, and how to write the score.R.
.no_predict_message <- function(state, fix) {
  registry <- .predict_registry()
  sprintf(paste0(
    "no predict() method for class %s: none is loaded, and none of the %d packages ",
    "installed in %d R librar%s (%s) registers S3method(predict, <class>) for them. ",
    "Install the package that fitted the model (or list it in rscore.toml 'packages')%s; ",
    "see %s"),
    paste0("'", .dispatch_classes(state), "'", collapse = ", "), registry$packages,
    length(registry$libraries), if (length(registry$libraries) == 1) "y" else "ies",
    paste(registry$libraries, collapse = ", "), fix, .SCORE_R_DOC)
}

# Classes worth finding a predict method for in a state that score.R made: the state,
# or the elements of a list state (a score.R may keep list(model = fit, ...)).
.state_objects <- function(state) {
  if (is.object(state) || isS4(state)) return(list(state))
  if (is.list(state)) return(Filter(function(item) is.object(item) || isS4(item), state))
  list()
}

# Attach what a score.R's state needs; never an error (score() decides how to score).
.load_packages_for <- function(state) {
  loaded <- character()
  for (item in .state_objects(state)) {
    found <- tryCatch(.find_predict(item), error = function(e) NULL)
    if (!is.null(found)) loaded <- c(loaded, found$package)
  }
  .model_packages(loaded)
}

# Packages every R session attaches: never reported as a model's packages.
.BASE_PACKAGES <- c("base", "stats", "utils", "methods", "graphics", "grDevices", "datasets")

# The packages a model needs, as reported by describe(): installed ones, not R's own.
.model_packages <- function(packages) {
  packages[packages %in% loadedNamespaces() & !packages %in% .BASE_PACKAGES]
}

# --- input prototype ------------------------------------------------------------

.kind_of <- function(x) {
  if (inherits(x, "Date")) "date"
  else if (inherits(x, "POSIXct")) "datetime"
  else if (is.ordered(x)) "ordered"
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

# The prototype column of an input `x` held with its R type (a factor with its levels).
.column_of <- function(name, x) {
  .column(name, .kind_of(x), if (is.factor(x)) levels(x) else character())
}

# The columns of a data.frame (zero rows is enough) as prototype columns.
.frame_columns <- function(frame) {
  lapply(names(frame), function(name) .column_of(name, frame[[name]]))
}

.ptype_prototype <- function(ptype) {
  if (!is.data.frame(ptype)) {
    stop("ptype.rds must hold a data.frame of the inputs (zero rows is enough)", call. = FALSE)
  }
  .frame_columns(ptype)
}

.model_terms <- function(model) {
  tt <- tryCatch(stats::terms(model), error = function(e) NULL)
  if (is.null(tt) && is.list(model) && inherits(model$Terms, "terms")) tt <- model$Terms  # gbm
  if (inherits(tt, "terms")) tt else NULL
}

# Training levels of a factor input, wherever the fitting package keeps them.
.training_levels <- function(model, name) {
  if (isS4(model)) return(NULL)
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

# Prototype columns from a terms object: its inputs, with the classes R recorded when
# the model was fitted (dataClasses) and the training levels of factors.
.terms_columns <- function(tt, model) {
  classes <- attr(tt, "dataClasses")
  inputs <- all.vars(stats::delete.response(tt))
  if (!length(inputs) || is.null(classes)) return(NULL)
  kinds <- c(numeric = "numeric", factor = "factor", ordered = "ordered",
             logical = "logical", character = "character")
  frame <- .kept_frame(model)
  lapply(inputs, function(name) {
    if (!is.null(frame) && name %in% names(frame) && !is.matrix(frame[[name]])) {
      # Held as is in the model frame: its exact R type (integer, Date, POSIXct...).
      column <- .column_of(name, frame[[name]])
      if (column$kind != "any") return(column)
    }
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

# The model frame a model keeps (lm's and glm's $model), or NULL: never rebuilt from
# the training data (that may be gone, or costly).
.kept_frame <- function(model) {
  if (!isS4(model) && is.list(model) && is.data.frame(model$model)) model$model else NULL
}

.terms_prototype <- function(model) {
  tt <- .model_terms(model)
  if (is.null(tt)) NULL else .terms_columns(tt, model)
}

# The inputs: ptype.rds always wins; then what the family's adapter recovers from the
# model; then the model's terms; else none (inputs pass through unchecked).
.prototype <- function(model_dir, state, adapter = NULL) {
  ptype_file <- file.path(model_dir, "ptype.rds")
  if (file.exists(ptype_file)) {
    ptype <- tryCatch(readRDS(ptype_file), error = function(e) {
      stop(.rds_error("ptype.rds", ptype_file, e), call. = FALSE)
    })
    return(list(source = "ptype.rds", columns = .ptype_prototype(ptype)))
  }
  if (!is.null(adapter)) {
    columns <- tryCatch(adapter$prototype(state), error = function(e) NULL)
    if (length(columns)) return(list(source = "model", columns = columns))
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

# --- predict() arguments -----------------------------------------------------------

# The argument names of a predict method: its formals or, for an S4 method whose
# setMethod() added arguments (R wraps them in a .local function), .local's.
.method_arguments <- function(method) {
  if (is.null(method) || is.primitive(method)) return("...")
  code <- body(method)
  if (is.call(code) && identical(code[[1]], as.name("{")) && length(code) >= 2) {
    first <- code[[2]]
    if (is.call(first) && identical(first[[1]], as.name("<-")) &&
        identical(first[[2]], as.name(".local"))) {
      return(names(formals(eval(first[[3]]))))
    }
  }
  names(formals(method))
}

# Every argument a predict method for any of `classes` names: where the chosen method
# passes `...` on (predict.glm to predict.lm), the methods further down the chain are
# the ones that can take a key.
.chain_arguments <- function(state, classes) {
  unique(unlist(lapply(classes, function(cl) {
    method <- if (isS4(state)) .s4_predict(cl) else NULL
    if (is.null(method)) method <- utils::getS3method("predict", cl, optional = TRUE)
    if (is.null(method)) character() else .method_arguments(method)
  })))
}

# How a found method reads in a message: "stats::predict.glm()".
.method_label <- function(found) {
  if (identical(found$kind, "S4")) {
    sprintf("%s's S4 predict() method for class '%s'", found$package, found$class)
  } else {
    sprintf("%s::predict.%s()", found$package, found$class)
  }
}

# Check rscore.toml's [predict] keys against what the method takes, at start-up: a
# key the method does not name is an error when it has no `...`; with `...`, a key
# that looks like a misspelt argument (R would partially match a prefix such as `typ`
# for `type`, or it is two edits away) is an error, any other a warning (it goes on
# through `...` unchecked). `fills`: the arguments rscore passes itself.
.check_predict_args <- function(keys, what, accepted, open, fills) {
  accepted <- setdiff(accepted, c("...", fills))
  for (key in intersect(keys, fills)) {
    stop(sprintf("rscore.toml [predict] must not set '%s': rscore passes it to %s", key, what),
         call. = FALSE)
  }
  shown <- if (length(accepted)) paste0("'", accepted, "'", collapse = ", ") else "no other"
  for (key in setdiff(keys, accepted)) {
    near <- accepted[startsWith(accepted, key) |
                       (nchar(key) >= 4 & utils::adist(key, accepted)[1, ] <= 2)]
    if (!open || length(near)) {
      hint <- if (length(near)) sprintf(" (did you mean '%s'?)", near[1]) else ""
      stop(sprintf("rscore.toml [predict] key '%s' is not an argument of %s%s; it takes %s",
                   key, what, hint, shown), call. = FALSE)
    }
    warning(sprintf(
      "rscore.toml [predict] key '%s' is not a named argument of %s: it is passed on through '...' unchecked",
      key, what), call. = FALSE)
  }
}

# The predict() arguments of every request: the adapter's defaults, then rscore.toml's
# [predict] (which win), checked against the method they go to.
.predict_arguments <- function(state, found, adapter, predict_args) {
  defaults <- if (is.null(adapter)) list() else adapter$defaults(state)
  fills <- c("object", if (is.null(adapter)) "newdata" else adapter$fills)
  classes <- .dispatch_classes(state)
  if (!is.null(adapter)) classes <- c(classes, adapter$also)
  accepted <- c(.chain_arguments(state, classes), if (!is.null(adapter)) adapter$accepts)
  open <- "..." %in% .method_arguments(found$method)
  .check_predict_args(names(predict_args), .method_label(found), accepted, open, fills)
  utils::modifyList(defaults, predict_args)
}

# The call predict(state, <data_as> = data, <args>), as a user would write it (so an
# error names the call, never a deparsed model); evaluated where `state` and `data` are.
.predict_call <- function(args, data_as = "newdata") {
  as.call(c(list(quote(predict), quote(state)), stats::setNames(list(quote(data)), data_as),
            args))
}

.default_score <- function(predict_args) {
  call <- .predict_call(predict_args)  # built once: every request evaluates it
  function(state, data) eval(call)
}

.adapter_score <- function(adapter, predict_args) {
  predict_with <- adapter$predict
  function(state, data) predict_with(state, data, predict_args)
}

# --- loading --------------------------------------------------------------------

# What a state with no predict() method is, for the error.
.describe_state <- function(state) {
  if (is.object(state) || isS4(state)) {
    sprintf("an object of class %s", paste0("'", .dispatch_classes(state), "'", collapse = ", "))
  } else {
    sprintf("a %s with no class", paste(.class2(state), collapse = "/"))
  }
}

# Load a bundle. Returns list(state, score, label, prototype, packages) or
# stops with a message that names the file or class at fault. `label` names, in
# errors, what a request runs: "score()" or the predict() method.
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
  if (has("score")) {
    return(list(
      state = state, score = env$score, label = "score()",
      prototype = .prototype(model_dir, state),
      packages = unique(unname(c(loaded, .load_packages_for(state))))
    ))
  }
  # No score(): every request calls predict() on the state, through the adapter of its
  # family if it has one. A state that predict() cannot dispatch on would make every
  # request a 500, so fail now instead, saying how to write the score.R.
  fix <- if (has("init")) {
    "; or define score(state, data) in score.R (it defines init() but no score())"
  } else {
    ", or add a score.R that defines score(state, data)"
  }
  if (!is.object(state) && !isS4(state)) {
    if (has("init")) {
      stop(sprintf(paste0(
        "score.R defines init() but no score(), and the default score, predict(state, ",
        "newdata = data), cannot score what init() returns (%s): define score(state, data) ",
        "in score.R, or remove init() to score model.rds with predict(); see %s"),
        .describe_state(state), .SCORE_R_DOC), call. = FALSE)
    }
    stop(sprintf(
      "model.rds holds %s, which predict() cannot score: add a score.R that defines score(state, data); see %s",
      .describe_state(state), .SCORE_R_DOC), call. = FALSE)
  }
  found <- .find_predict(state)
  if (is.null(found)) stop(.no_predict_message(state, fix), call. = FALSE)
  adapter <- .adapter_for(state)
  if (is.null(adapter) && !"newdata" %in% .chain_arguments(state, .dispatch_classes(state))) {
    # predict.Arima(object, n.ahead, ...): `newdata` would vanish into `...`, and every
    # request would get an answer that is not about its rows.
    how <- if (has("init")) "define score(state, data) in score.R" else
      "add a score.R that defines score(state, data)"
    stop(sprintf("%s takes no 'newdata' argument, so it cannot score the rows of a request: %s; see %s",
                 .method_label(found), how, .SCORE_R_DOC), call. = FALSE)
  }
  args <- .predict_arguments(state, found, adapter, predict_args)
  list(
    state = state,
    score = if (is.null(adapter)) .default_score(args) else .adapter_score(adapter, args),
    label = sprintf("predict() for class '%s'", found$class),
    prototype = .prototype(model_dir, state, adapter),
    packages = unique(unname(c(loaded, .model_packages(found$package))))
  )
}

# --- scoring --------------------------------------------------------------------

# Status codes of .score()'s answer, read by position in Python (rconvert.py): cheaper
# through rpy2 than names.
.VECTOR <- 0L   # list(0L, values): one value per row
.COLUMNS <- 1L  # list(1L, names, list of columns): one object per row
.FAILED <- 2L   # list(2L, message)

# The output shape rule (docs/bundles.md#outputs), one for every model:
#   vector -> one value per row; factor -> its labels; 1-d array -> a vector;
#   matrix -> its columns by name (several unnamed: V1, V2, ...; one unnamed: a plain
#   vector); array n x k x 1 -> the n x k matrix; data.frame -> its columns;
#   named list of per-row components (lda's class and posterior) -> their columns, a
#   matrix component's as <name>.<column>.
# A 1-row answer that R dropped to a named vector (a probability matrix's one row,
# e.g. nnet::multinom's or MASS::polr's) is that row: the same columns as in a batch.
# `label` names what produced `x` in errors: "score()" or "predict() for class 'x'".
.shape_result <- function(x, nrows, label = "score()") {
  if (is.atomic(x) && length(dim(x)) < 2L) {  # the common case first: a plain vector
    if (length(x) == nrows) return(list(.VECTOR, .plain(x, label)))
    if (nrows != 1L || length(x) < 2L || is.null(names(x))) {
      .shape_stop("%s returned %d values for %d rows", label, length(x), nrows)
    }
    x <- matrix(x, nrow = 1L, dimnames = list(NULL, names(x)))
  }
  x <- .drop_unit_dims(x)
  if (is.matrix(x) && ncol(x) == 1L && is.null(colnames(x))) {
    if (nrow(x) != nrows) .shape_stop("%s returned %d values for %d rows", label, nrow(x), nrows)
    return(list(.VECTOR, .plain(x[, 1L], label)))
  }
  columns <- if (is.matrix(x)) {
    .matrix_columns(x, "")
  } else if (is.data.frame(x) ||
             (is.list(x) && !is.object(x) && !is.null(names(x)) && all(nzchar(names(x))))) {
    .component_columns(x, label)
  } else {
    .shape_stop(paste0("%s returned an object of class '%s'; expected a vector, factor, ",
                       "matrix, data.frame or named list of columns"),
                label, paste(class(x), collapse = "/"))
  }
  if (!length(columns)) .shape_stop("%s returned no columns", label)
  for (i in seq_along(columns)) {
    if (length(columns[[i]]) != nrows) {
      .shape_stop("%s returned column '%s' with %d values for %d rows",
                  label, names(columns)[i], length(columns[[i]]), nrows)
    }
    columns[[i]] <- .plain(columns[[i]], label)
  }
  list(.COLUMNS, names(columns), unname(columns))
}

# An n x k x 1 (x 1 ...) array as the n x k matrix; anything else as it is.
.drop_unit_dims <- function(x) {
  d <- dim(x)
  if (length(d) <= 2L || any(d[-(1:2)] != 1L)) return(x)
  array(x, dim = d[1:2], dimnames = dimnames(x)[1:2])
}

# A matrix's columns, named by its column names (V1, V2, ... when it has none), each
# prefixed "<prefix>." when it is a component of a list.
.matrix_columns <- function(x, prefix) {
  names <- colnames(x)
  if (is.null(names)) names <- paste0("V", seq_len(ncol(x)))
  if (nzchar(prefix)) names <- paste(prefix, names, sep = ".")
  stats::setNames(lapply(seq_len(ncol(x)), function(j) x[, j]), names)
}

# The columns of a data.frame or of a named list of per-row components.
.component_columns <- function(x, label) {
  columns <- list()
  for (name in names(x)) {
    item <- .drop_unit_dims(x[[name]])
    if (is.data.frame(item)) item <- as.matrix(item)
    columns <- c(columns, if (is.matrix(item)) {
      .matrix_columns(item, name)
    } else {
      stats::setNames(list(item), name)
    })
  }
  columns
}

# An error of the result's shape: the message names what produced it, as is.
.shape_stop <- function(format, ...) {
  stop(structure(class = c("rscore_shape", "error", "condition"),
                 list(message = sprintf(format, ...), call = NULL)))
}

# An atomic vector as Python reads it: factors as labels. Other attributes (names,
# dim) are ignored there, so they are not stripped here (that would copy).
.plain <- function(x, label = "score()") {
  if (is.factor(x)) return(as.character(x))
  if (!is.atomic(x)) .shape_stop("%s returned a column that is not atomic", label)
  x
}

# Call score(state, data) and shape its result; errors come back as data, not as R
# conditions, so rpy2 never formats a deparsed model into a message. An error names
# what failed: "score() failed: ..." for a score.R's, "predict() for class 'x' failed:
# ..." for the default path's. (Warnings are off while serving: see LoadedModel.)
.score <- function(score, state, data, label = "score()") {
  tryCatch(
    .shape_result(score(state, data), nrow(data), label),
    rscore_shape = function(e) list(.FAILED, conditionMessage(e)),
    error = function(e) list(.FAILED, sprintf("%s failed: %s", label, conditionMessage(e)))
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
